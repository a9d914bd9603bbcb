"""`Pipeline.from_pipe(pipe, **overrides)`: the same component objects (no copy, no new memory), the config options
carried over, and the same images as diffusers' from_pipe on the same weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call

from sdxl.pipelines.base import DiffusionPipeline
from sdxl.pipelines.inpaint import StableDiffusionXLInpaintPipeline
from sdxl.pipelines.text2img import StableDiffusionXLPipeline
from sdxl.schedulers.euler import EulerDiscreteScheduler

COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")


def _storages(pipe) -> set[int]:
    return {p.data_ptr() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()}


@pytest.fixture
def fresh(tiny_base):
    """A pipeline of our own for tests that change the shared modules (dtype casts, offload)."""
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shares_every_component(ours):
    before = _storages(ours)
    new = StableDiffusionXLInpaintPipeline.from_pipe(ours)
    assert type(new) is StableDiffusionXLInpaintPipeline
    for name in COMPONENTS:
        assert getattr(new, name) is getattr(ours, name), name
    assert _storages(new) == before == _storages(ours)  # no parameter copied or moved
    assert new.config.force_zeros_for_empty_prompt == ours.config.force_zeros_for_empty_prompt
    assert new.config._class_name == "StableDiffusionXLInpaintPipeline"
    assert new.config._name_or_path == ours.config._name_or_path


def test_round_trip_gives_diffusers_image(ours, theirs):
    """text2img -> inpaint -> text2img on the shared modules draws the same image as diffusers' pipeline."""
    import diffusers

    back = StableDiffusionXLPipeline.from_pipe(StableDiffusionXLInpaintPipeline.from_pipe(ours))
    back.set_progress_bar_config(disable=True)
    theirs_back = diffusers.StableDiffusionXLPipeline.from_pipe(
        diffusers.StableDiffusionXLInpaintPipeline.from_pipe(theirs)
    )
    theirs_back.set_progress_bar_config(disable=True)
    assert_images_match(call(back), call(theirs_back))


def test_option_override_matches_diffusers(ours, theirs):
    """An option passed to from_pipe replaces the source's config value in the new pipeline only."""
    import diffusers

    new = StableDiffusionXLPipeline.from_pipe(ours, force_zeros_for_empty_prompt=False)
    assert new.config.force_zeros_for_empty_prompt is False
    assert ours.config.force_zeros_for_empty_prompt is True
    theirs_new = diffusers.StableDiffusionXLPipeline.from_pipe(theirs, force_zeros_for_empty_prompt=False)
    theirs_new.set_progress_bar_config(disable=True)
    new.set_progress_bar_config(disable=True)
    images = call(new)
    assert_images_match(images, call(theirs_new))
    assert_changes(call(theirs_new), call(theirs))


def test_component_override(ours):
    scheduler = EulerDiscreteScheduler.from_config(ours.scheduler.config)
    new = StableDiffusionXLInpaintPipeline.from_pipe(ours, scheduler=scheduler)
    assert new.scheduler is scheduler and ours.scheduler is not scheduler
    assert new.unet is ours.unet


def test_unused_options_are_kept_privately_as_diffusers(ours, theirs):
    """An option the target does not take (requires_aesthetics_score on text2img) is kept as `_name` and comes back."""
    import diffusers

    inpaint = StableDiffusionXLInpaintPipeline.from_pipe(ours, requires_aesthetics_score=True)
    t2i = StableDiffusionXLPipeline.from_pipe(inpaint)
    assert t2i.config._requires_aesthetics_score is True
    assert "requires_aesthetics_score" not in t2i.config
    again = StableDiffusionXLInpaintPipeline.from_pipe(t2i)
    assert again.config.requires_aesthetics_score is True

    theirs_t2i = diffusers.StableDiffusionXLPipeline.from_pipe(
        diffusers.StableDiffusionXLInpaintPipeline.from_pipe(theirs, requires_aesthetics_score=True)
    )
    assert theirs_t2i.config["_requires_aesthetics_score"] is True
    again_theirs = diffusers.StableDiffusionXLInpaintPipeline.from_pipe(theirs_t2i)
    assert again_theirs.config.requires_aesthetics_score is True


def test_dtype_kept_unless_asked(tiny_base):
    """Without torch_dtype the shared models keep their dtype (diffusers 0.42 casts them, and the source pipeline's,
    to float32: we do not); with it, they are cast in place."""
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.bfloat16)
    new = StableDiffusionXLInpaintPipeline.from_pipe(pipe)
    assert new.unet.dtype == pipe.unet.dtype == torch.bfloat16
    new = StableDiffusionXLInpaintPipeline.from_pipe(pipe, torch_dtype=torch.float32)
    assert new.unet is pipe.unet and pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32


def test_diffusion_pipeline_from_pipe_keeps_the_class(ours):
    new = DiffusionPipeline.from_pipe(ours)
    assert type(new) is StableDiffusionXLPipeline and new is not ours and new.unet is ours.unet


def test_offload_is_carried_over(fresh):
    fresh._enable_model_offload("cpu")
    new = StableDiffusionXLInpaintPipeline.from_pipe(fresh)
    assert new._offload is fresh._offload


def test_errors(ours):
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['guidance'\]"):
        StableDiffusionXLInpaintPipeline.from_pipe(ours, guidance=3)
    with pytest.raises(ValueError, match="once"):
        StableDiffusionXLInpaintPipeline.from_pipe(ours, torch_dtype=torch.float32, dtype=torch.float32)
    no_vae = StableDiffusionXLPipeline(**{**ours.components, "vae": None})
    with pytest.raises(ValueError, match=r"needs the components \['vae'\].*vae=\.\.\."):
        StableDiffusionXLInpaintPipeline.from_pipe(no_vae)
    # a component passed explicitly fills the gap
    assert StableDiffusionXLInpaintPipeline.from_pipe(no_vae, vae=ours.vae).vae is ours.vae


@pytest.mark.skipif(importlib.util.find_spec("sdxl.pipelines.img2img") is None, reason="img2img pipeline not yet in")
def test_img2img_from_text2img(ours):
    """The seed's `AutoPipelineForImage2Image.from_pipe(pipeline_text2image)` path, on the class itself."""
    from sdxl.pipelines.img2img import StableDiffusionXLImg2ImgPipeline

    new = StableDiffusionXLImg2ImgPipeline.from_pipe(ours)
    assert type(new) is StableDiffusionXLImg2ImgPipeline
    for name in COMPONENTS:
        assert getattr(new, name) is getattr(ours, name), name
    assert new.config.requires_aesthetics_score is False
