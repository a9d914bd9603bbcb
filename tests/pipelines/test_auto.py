"""AutoPipelineForText2Image / ForImage2Image / ForInpainting: the class diffusers' auto pipelines pick, the same
images, shared modules with from_pipe, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from pipeline_parity import assert_images_match, call

from sdxl.pipelines import auto
from sdxl.pipelines.auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from sdxl.pipelines.base import DiffusionPipeline
from sdxl.pipelines.text2img import StableDiffusionXLPipeline

SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
HAS_IMG2IMG = importlib.util.find_spec("sdxl.pipelines.img2img") is not None


@pytest.mark.parametrize("task", [auto.TEXT2IMAGE, auto.IMAGE2IMAGE, auto.INPAINTING])
@pytest.mark.parametrize("class_name", SDXL_CLASSES)
def test_mapping_matches_diffusers(task, class_name):
    """Every SDXL class maps to the task class diffusers' AUTO_*_PIPELINES_MAPPING gives (compared by name)."""
    from diffusers.pipelines import auto_pipeline as ref

    mapping = {
        auto.TEXT2IMAGE: ref.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        auto.IMAGE2IMAGE: ref.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        auto.INPAINTING: ref.AUTO_INPAINT_PIPELINES_MAPPING,
    }[task]
    expected = ref._get_task_class(mapping, class_name).__name__
    module, name = auto._TASKS[task][auto._FAMILY[class_name]]
    assert name == expected
    assert module.startswith("sdxl.pipelines.")


def test_text2image_from_pretrained_matches_diffusers(tiny_base, theirs):
    import diffusers

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    assert type(pipe) is StableDiffusionXLPipeline
    ref = diffusers.AutoPipelineForText2Image.from_pretrained(
        tiny_base[0], torch_dtype=torch.float32, add_watermarker=False
    )
    assert type(ref).__name__ == type(pipe).__name__
    pipe.set_progress_bar_config(disable=True)
    ref.set_progress_bar_config(disable=True)
    assert_images_match(call(pipe), call(ref))


def test_inpainting_from_pretrained_picks_the_inpaint_class(tiny_base):
    from sdxl.pipelines.inpaint import StableDiffusionXLInpaintPipeline

    pipe = AutoPipelineForInpainting.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    assert type(pipe) is StableDiffusionXLInpaintPipeline
    assert pipe.config.force_zeros_for_empty_prompt is True


@pytest.mark.skipif(not HAS_IMG2IMG, reason="img2img pipeline not yet in")
def test_image2image_from_pretrained_and_refiner(tiny_base, tiny_refiner):
    from sdxl.pipelines.img2img import StableDiffusionXLImg2ImgPipeline

    base = AutoPipelineForImage2Image.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    assert type(base) is StableDiffusionXLImg2ImgPipeline
    refiner = AutoPipelineForImage2Image.from_pretrained(tiny_refiner[0], torch_dtype=torch.float32)
    assert type(refiner) is StableDiffusionXLImg2ImgPipeline
    assert refiner.config.requires_aesthetics_score is True and refiner.text_encoder is None


@pytest.mark.parametrize(
    "auto_cls,module",
    [
        (AutoPipelineForText2Image, "sdxl.pipelines.text2img"),
        (AutoPipelineForInpainting, "sdxl.pipelines.inpaint"),
        pytest.param(
            AutoPipelineForImage2Image,
            "sdxl.pipelines.img2img",
            marks=pytest.mark.skipif(not HAS_IMG2IMG, reason="img2img pipeline not yet in"),
        ),
    ],
)
def test_from_pipe_shares_modules(ours, auto_cls, module):
    pipe = auto_cls.from_pipe(ours)
    assert type(pipe).__module__ == module
    for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler"):
        assert getattr(pipe, name) is getattr(ours, name), name
    # and back: the task class of an inpaint pipeline for text2image is the base class
    assert type(AutoPipelineForText2Image.from_pipe(pipe)) is StableDiffusionXLPipeline


def test_from_pipe_inpaint_image_matches_diffusers_auto(ours, theirs):
    """AutoPipelineForText2Image.from_pipe(AutoPipelineForInpainting.from_pipe(pipe)) draws diffusers' image."""
    import diffusers

    mine = AutoPipelineForText2Image.from_pipe(AutoPipelineForInpainting.from_pipe(ours))
    ref = diffusers.AutoPipelineForText2Image.from_pipe(diffusers.AutoPipelineForInpainting.from_pipe(theirs))
    mine.set_progress_bar_config(disable=True)
    ref.set_progress_bar_config(disable=True)
    assert_images_match(call(mine), call(ref))


def _folder(tmp_path, index) -> str:
    (tmp_path / "model_index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return str(tmp_path)


def test_unknown_class_is_a_clear_error(tmp_path):
    folder = _folder(tmp_path, {"_class_name": "KandinskyV22Pipeline"})
    with pytest.raises(ValueError, match="no image2image pipeline for the pipeline class 'KandinskyV22Pipeline'"):
        AutoPipelineForImage2Image.from_pretrained(folder)


def test_from_pipe_of_an_unknown_class(ours):
    class MyPipeline(StableDiffusionXLPipeline):
        pass

    mine = MyPipeline(**ours.components)
    with pytest.raises(ValueError, match="no inpainting pipeline for the pipeline class 'MyPipeline'"):
        AutoPipelineForInpainting.from_pipe(mine)
    with pytest.raises(TypeError, match="takes a pipeline"):
        AutoPipelineForInpainting.from_pipe("stabilityai/stable-diffusion-xl-base-1.0")


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model_index.json"):
        AutoPipelineForText2Image.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="not valid JSON"):
        AutoPipelineForText2Image.from_pretrained(_folder(tmp_path, "{nope"))
    with pytest.raises(ValueError, match="no `_class_name`"):
        AutoPipelineForText2Image.from_pretrained(_folder(tmp_path, {"unet": ["diffusers", "UNet2DConditionModel"]}))


def test_auto_classes_are_not_instantiated():
    with pytest.raises(TypeError, match="from_pretrained"):
        AutoPipelineForText2Image()


def test_diffusion_pipeline_from_pretrained_picks_the_class(tiny_base):
    """The generic loader builds the class model_index.json names (the base folder: text-to-image)."""
    pipe = DiffusionPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    assert type(pipe) is StableDiffusionXLPipeline
