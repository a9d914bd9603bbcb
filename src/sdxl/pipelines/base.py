"""What every pipeline shares: building one (`from_pretrained`, `from_single_file`, `from_pipe`), saving it, the
progress bar; its named components, config, device/dtype and `.to()` come from `components.py`.

`DiffusionPipeline.from_pretrained(folder_or_hub_id)` reads `_class_name` from the checkpoint's model_index.json and
builds the matching pipeline class from `PIPELINE_CLASSES`; adding a mode (img2img, inpaint) is one line there.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from sdxl.pipelines.components import ComponentsMixin, FrozenConfig  # noqa: F401  (FrozenConfig: re-exported)
from sdxl.pipelines.memory import MemoryOptionsMixin

logger = logging.getLogger(__name__)

# model_index.json `_class_name` -> module defining the class of that name
PIPELINE_CLASSES: dict[str, str] = {
    "StableDiffusionXLPipeline": "sdxl.pipelines.text2img",
    "StableDiffusionXLImg2ImgPipeline": "sdxl.pipelines.img2img",
    "StableDiffusionXLInpaintPipeline": "sdxl.pipelines.inpaint",
}

# Every component name a diffusers SDXL model_index.json may list; these `from_pretrained` kwargs replace
# (or with None, skip) loading that component.
COMPONENT_NAMES = (
    "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler",
    "image_encoder", "feature_extractor",
)


def pipeline_class(class_name: Any) -> type[DiffusionPipeline]:
    """The pipeline class named by a model_index.json `_class_name`."""
    module = PIPELINE_CLASSES.get(class_name) if isinstance(class_name, str) else None
    if module is None:
        raise ValueError(
            f"model_index.json names the pipeline class {class_name!r}, which sdxl does not provide; "
            f"supported: {sorted(PIPELINE_CLASSES)}. Load it with one of those classes' from_pretrained."
        )
    return getattr(importlib.import_module(module), class_name)


@dataclass
class PipelineOutput:
    """A pipeline's result: `images` is a list of PIL images, an (B, H, W, 3) array, or a tensor ("pt"/"latent").

    Like diffusers' outputs, `output[0]` and `output["images"]` also give the images.
    """

    images: Any

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.images,)


class DiffusionPipeline(ComponentsMixin, MemoryOptionsMixin):
    """Base of the pipelines: holds the components as attributes, and the pipeline config.

    Subclasses set `_component_names` (in their `__init__` order), `_required_components` and `_init_options`
    (the non-component `__init__` arguments that model_index.json may carry, such as
    `force_zeros_for_empty_prompt`), and call `register_components` / `register_to_config` in `__init__`.
    """

    _component_names: tuple[str, ...] = ()
    _required_components: tuple[str, ...] = ()
    # diffusers' attribute: components a pipeline may hold as None (every one not required)
    _optional_components: tuple[str, ...] = ()
    _init_options: tuple[str, ...] = ()
    # the order models run in (diffusers' attribute); model CPU offload manages these, then any other model
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"

    @staticmethod
    def numpy_to_pil(images: Any) -> list[Any]:
        """(B, H, W, C) or (H, W, C) float arrays in [0, 1] -> PIL images (diffusers' static method)."""
        from sdxl.image import numpy_to_pil

        return numpy_to_pil(images)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm keyword arguments for the denoising progress bar, e.g. `disable=True`, `leave=False`."""
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        """A tqdm bar over `iterable` or with `total` steps, configured by `set_progress_bar_config`."""
        from tqdm.auto import tqdm

        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar() needs an `iterable` or a `total`.")

    # ---- building pipelines -----------------------------------------------------------------------------------------

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> DiffusionPipeline:
        """A `cls` pipeline on the same component objects as `pipeline`: no copy, no new memory.

        `StableDiffusionXLImg2ImgPipeline.from_pipe(text2img_pipe)` shares the models, tokenizers and scheduler.
        Keyword arguments named like components replace that component; the others are `cls`'s options
        (`requires_aesthetics_score`, ...), which override the source pipeline's config. Config values `cls` does not
        take are kept as private `_name` entries, so a round trip gives them back. `torch_dtype` (or `dtype`) casts the
        shared models in place. Unlike diffusers 0.42, which casts them to float32 when no dtype is given (the
        source pipeline included), the models keep their dtype. CPU offload and `optimize()` set on `pipeline` stay in
        effect.
        """
        target = type(pipeline) if cls is DiffusionPipeline else cls
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        if torch_dtype is not None and dtype is not None:
            raise ValueError("Pass the dtype once: as `torch_dtype` or as `dtype`, not both.")
        dtype = torch_dtype if torch_dtype is not None else dtype
        passed = {n: kwargs.pop(n) for n in target._component_names if n in kwargs}
        source = pipeline.components
        components = {n: passed[n] if n in passed else source.get(n) for n in target._component_names}
        options = {k: kwargs.pop(k) for k in target._init_options if k in kwargs}
        if kwargs:
            raise TypeError(
                f"{target.__name__}.from_pipe got unexpected keyword arguments {sorted(kwargs)}; it takes the "
                f"components {list(target._component_names)}, the options {list(target._init_options)} and torch_dtype."
            )
        config = {k: v for k, v in pipeline.config.items() if k != "_class_name"}
        name_or_path = config.pop("_name_or_path", None)
        for key in target._init_options:
            if key in options:
                continue
            if key in config:
                options[key] = config.pop(key)
            elif f"_{key}" in config:  # an option an earlier from_pipe could not pass on
                options[key] = config.pop(f"_{key}")
        missing = [n for n in target._required_components if components.get(n) is None]
        if missing:
            raise ValueError(
                f"{target.__name__}.from_pipe needs the components {missing}, which {type(pipeline).__name__} does not "
                f"have: pass them as keyword arguments ({', '.join(f'{n}=...' for n in missing)})."
            )
        pipe = target(**components, **options)
        unused = {k if k.startswith("_") else f"_{k}": v for k, v in config.items()}
        pipe.register_to_config(**unused)
        if name_or_path is not None:
            pipe.register_to_config(_name_or_path=name_or_path)
        if dtype is not None:
            pipe.to(dtype=dtype)
        offload = getattr(pipeline, "_offload", None)
        if offload is not None:
            if any(components[n] is not m for n, m in offload.models.items() if n in components):
                logger.warning(
                    "from_pipe: a replaced component is not covered by the source pipeline's CPU offload; call "
                    "enable_model_cpu_offload() on the new pipeline."
                )
            pipe._offload = offload
        fast = getattr(pipeline, "_fast", None)
        if fast is not None and getattr(pipe, "unet", None) is fast.runner.unet:
            pipe._fast = fast  # optimize()'s runner and settings: the same UNet, already optimised
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Any,
        *,
        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        device_map: Any = None,
        low_cpu_mem_usage: bool | None = None,
        **kwargs: Any,
    ) -> DiffusionPipeline:
        """Load a pipeline from a diffusers-layout folder or hub id.

        Keyword arguments named like components (`vae=`, `text_encoder_2=`, `scheduler=`, ...) are used instead of
        loading that component (None skips it); the others are pipeline options (`force_zeros_for_empty_prompt`,
        `add_watermarker`), which override model_index.json. Every model gets one dtype, `torch_dtype` (or its
        newer spelling `dtype`), default float32, or per component with a dict ({"unet": torch.float16,
        "default": torch.float32}). `device_map` puts the whole pipeline on one device ("cuda", {"": "cuda:1"},
        "balanced"/"auto": the accelerator, else the CPU): sdxl does not split models across devices.
        `low_cpu_mem_usage` is accepted and ignored (models always build on the meta device). On
        `DiffusionPipeline` itself the class comes from model_index.json's `_class_name`.
        """
        from sdxl.loading.diffusers import load_pipeline_components

        if torch_dtype is not None and dtype is not None:
            raise ValueError("Pass the dtype once: as `torch_dtype` or as `dtype`, not both.")
        overrides = {name: kwargs.pop(name) for name in COMPONENT_NAMES if name in kwargs}
        if cls is not DiffusionPipeline:
            cls._check_options(kwargs)
        components, model_index = load_pipeline_components(
            pretrained_model_name_or_path,
            torch_dtype=torch_dtype if torch_dtype is not None else dtype,
            variant=variant,
            use_safetensors=use_safetensors,
            overrides=overrides,
            device_map=device_map,
        )
        target = cls if cls is not DiffusionPipeline else pipeline_class(model_index.get("_class_name"))
        target._check_options(kwargs)
        components = {**components, **overrides}
        unexpected = [n for n, c in components.items() if n not in target._component_names and c is not None]
        if unexpected:
            raise ValueError(
                f"{pretrained_model_name_or_path} has components {unexpected} that {target.__name__} does not use; "
                f"pass {', '.join(f'{n}=None' for n in unexpected)} to skip them."
            )
        missing = [n for n in target._required_components if components.get(n) is None]
        if missing:
            raise ValueError(
                f"{target.__name__} needs the components {missing}, but {pretrained_model_name_or_path} has none: "
                f"pass them as keyword arguments ({', '.join(f'{n}=...' for n in missing)})."
            )
        options = {k: model_index[k] for k in target._init_options if k in model_index}
        options.update(kwargs)
        pipe = target(**{n: components.get(n) for n in target._component_names}, **options)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: Any,
        *,
        torch_dtype: torch.dtype | None = None,
        config: Any = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> DiffusionPipeline:
        """Load a pipeline from one checkpoint file in the original Stability layout (e.g. sd_xl_base_1.0.safetensors).

        The model kind (base, refiner, 9-channel inpaint) is detected from the keys and shapes; `config` (a local
        diffusers folder) gives the configs where the model is not SDXL-sized. Component keyword arguments
        (`vae=`, `text_encoder=`, ...) complete a file that lacks them or replace them. Only safetensors load unless
        `allow_pickle=True` (then only through `torch.load(weights_only=True)`).
        """
        from sdxl.loading.single_file import BASE, INPAINT, REFINER, load_single_file_components

        overrides = {name: kwargs.pop(name) for name in COMPONENT_NAMES if name in kwargs}
        if cls is not DiffusionPipeline:
            cls._check_options(kwargs)
        components, info = load_single_file_components(
            pretrained_model_link_or_path,
            torch_dtype=torch_dtype,
            config=config,
            allow_pickle=allow_pickle,
            overrides=overrides,
        )
        target = cls
        if cls is DiffusionPipeline:
            # as diffusers: a refiner file is an img2img pipeline, a 9-channel file an inpainting one
            kinds = {
                BASE: "StableDiffusionXLPipeline",
                REFINER: "StableDiffusionXLImg2ImgPipeline",
                INPAINT: "StableDiffusionXLInpaintPipeline",
            }
            target = pipeline_class(kinds[info["kind"]])
            target._check_options(kwargs)
        options = {k: v for k, v in info["options"].items() if k in target._init_options}
        options.update(kwargs)
        pipe = target(**{n: components.get(n) for n in target._component_names}, **options)
        pipe.register_to_config(_name_or_path=str(pretrained_model_link_or_path))
        return pipe

    def save_single_file(self, path: Any) -> Any:
        """Write the models as one safetensors file in the original Stability layout; returns its path."""
        from sdxl.loading.save import save_single_file

        return save_single_file(self.components, path)

    def save_pretrained(
        self, save_directory: Any, safe_serialization: bool = True, variant: str | None = None, **kwargs: Any
    ) -> Any:
        """Write the diffusers folder layout (model_index.json, one subfolder per component); returns the folder.

        Weights are always safetensors: `safe_serialization=False` (diffusers' pickle format) is accepted and changes
        nothing, since sdxl never writes pickles; diffusers reads these folders too. `variant` names the files
        (`diffusion_pytorch_model.fp16.safetensors`). Other diffusers keywords (`push_to_hub`, ...) are refused."""
        from sdxl.loading.save import save_pretrained

        if kwargs:
            raise TypeError(f"save_pretrained got unsupported arguments {sorted(kwargs)}; it takes variant=.")
        if not safe_serialization:
            logger.info("safe_serialization=False: sdxl writes safetensors anyway (it never writes pickle files).")

        options = {k: v for k, v in self.config.items() if k in self._init_options}
        return save_pretrained(
            self.components, save_directory, class_name=type(self).__name__, options=options, variant=variant
        )

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(cls._init_options))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected keyword arguments {unknown}; it takes the components "
                f"{list(cls._component_names)}, the options {list(cls._init_options)}, torch_dtype, variant and "
                "use_safetensors."
            )
