"""AutoPipelineForText2Image / ForImage2Image / ForInpainting: the task's class for a checkpoint or a pipeline.

As diffusers' `AUTO_*_PIPELINES_MAPPING`: a checkpoint's model_index.json `_class_name` (or a pipeline's class) names
a model family, and each task maps the family to its class; an SDXL base checkpoint opened with
`AutoPipelineForImage2Image` gives a `StableDiffusionXLImg2ImgPipeline`, and `from_pipe` builds it on the same
module objects.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from sdxl.pipelines.base import DiffusionPipeline

TEXT2IMAGE, IMAGE2IMAGE, INPAINTING = "text2image", "image2image", "inpainting"

# pipeline class name -> model family (diffusers' `_get_model`)
_FAMILY = {
    "StableDiffusionXLPipeline": "stable-diffusion-xl",
    "StableDiffusionXLImg2ImgPipeline": "stable-diffusion-xl",
    "StableDiffusionXLInpaintPipeline": "stable-diffusion-xl",
}
# task -> family -> (module, class name); modules are imported only when the class is needed
_TASKS: dict[str, dict[str, tuple[str, str]]] = {
    TEXT2IMAGE: {"stable-diffusion-xl": ("sdxl.pipelines.text2img", "StableDiffusionXLPipeline")},
    IMAGE2IMAGE: {"stable-diffusion-xl": ("sdxl.pipelines.img2img", "StableDiffusionXLImg2ImgPipeline")},
    INPAINTING: {"stable-diffusion-xl": ("sdxl.pipelines.inpaint", "StableDiffusionXLInpaintPipeline")},
}


def task_class(task: str, class_name: Any) -> type[DiffusionPipeline]:
    """The `task` pipeline class for a pipeline of class `class_name`; ValueError when there is none."""
    family = _FAMILY.get(class_name) if isinstance(class_name, str) else None
    entry = _TASKS[task].get(family) if family is not None else None
    if entry is None:
        raise ValueError(
            f"There is no {task} pipeline for the pipeline class {class_name!r}: the auto pipelines know "
            f"{sorted(_FAMILY)}. Load the checkpoint with the pipeline class you need instead."
        )
    module, name = entry
    return getattr(importlib.import_module(module), name)


def _model_index_class(pretrained_model_or_path: Any, kwargs: dict[str, Any]) -> Any:
    """`_class_name` of the checkpoint's model_index.json (a folder, or a hub id from the cache or the hub)."""
    from sdxl.loading.hub import resolve_pretrained

    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "local_files_only") if k in kwargs}
    root = resolve_pretrained(pretrained_model_or_path, subfolders=[], **hub)
    path = root / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No model_index.json in {root}: the auto pipelines load diffusers pipeline folders; for a single "
            "checkpoint file use the pipeline class's from_single_file."
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-download or re-save the pipeline.") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{path} has no `_class_name` entry, so the pipeline class is unknown.")
    return index["_class_name"]


class _AutoPipeline:
    """Shared by the three auto classes: `from_pretrained` and `from_pipe` return the task's pipeline class."""

    _task: str = ""

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError(
            f"{type(self).__name__} cannot be instantiated: use {type(self).__name__}.from_pretrained(path_or_id) "
            f"or {type(self).__name__}.from_pipe(pipeline)."
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_or_path: Any, **kwargs: Any) -> DiffusionPipeline:
        """Load a diffusers folder or hub id as this task's pipeline; keyword arguments as that class's
        `from_pretrained` (torch_dtype, variant, component overrides, options)."""
        class_name = _model_index_class(pretrained_model_or_path, kwargs)
        return task_class(cls._task, class_name).from_pretrained(pretrained_model_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """This task's pipeline on `pipeline`'s component objects (no copy); keyword arguments as `from_pipe`."""
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"from_pipe takes a pipeline, but got {type(pipeline).__name__}.")
        return task_class(cls._task, type(pipeline).__name__).from_pipe(pipeline, **kwargs)


class AutoPipelineForText2Image(_AutoPipeline):
    """`from_pretrained` / `from_pipe` give the text-to-image pipeline (StableDiffusionXLPipeline for SDXL)."""

    _task = TEXT2IMAGE


class AutoPipelineForImage2Image(_AutoPipeline):
    """`from_pretrained` / `from_pipe` give the image-to-image pipeline (StableDiffusionXLImg2ImgPipeline)."""

    _task = IMAGE2IMAGE


class AutoPipelineForInpainting(_AutoPipeline):
    """`from_pretrained` / `from_pipe` give the inpainting pipeline (StableDiffusionXLInpaintPipeline)."""

    _task = INPAINTING
