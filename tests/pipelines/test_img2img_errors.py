"""Bad input to StableDiffusionXLImg2ImgPipeline: each a clear ValueError/TypeError before any work is done."""

from __future__ import annotations

import logging

import img2img_fixtures as fx
import pytest
import torch
from img2img_fixtures import i2i_call, make_image

import sdxl.pipelines.img2img_common as common
from sdxl.pipelines.img2img import StableDiffusionXLImg2ImgPipeline

# the session fixtures of img2img_fixtures, registered in this module
ours_i2i, ours_refiner, theirs_refiner = fx.ours_i2i, fx.ours_refiner, fx.theirs_refiner


@pytest.mark.parametrize("strength", [-0.1, 1.5, True, "0.5", None])
def test_strength_outside_zero_one(ours_i2i, strength):
    with pytest.raises(ValueError, match=r"`strength` must be a number between 0 and 1.*" + repr(strength)[:3]):
        i2i_call(ours_i2i, strength=strength)


def test_strength_that_keeps_no_step(ours_i2i):
    """diffusers fails inside the UNet with a reshape error; we say what to change."""
    with pytest.raises(ValueError, match=r"strength=0.05.*keeps no step.*raise `strength` or `num_inference_steps`"):
        i2i_call(ours_i2i, strength=0.05)


@pytest.mark.parametrize(("start", "end"), [(0.8, 0.8), (0.8, 0.5)])
def test_denoising_start_not_before_end(ours_i2i, start, end):
    latents = torch.zeros(1, 4, 32, 32)
    with pytest.raises(ValueError, match=rf"`denoising_start` \({start}\) must be smaller than `denoising_end`"):
        i2i_call(ours_i2i, image=latents, denoising_start=start, denoising_end=end)


@pytest.mark.parametrize(("value", "error"), [(0.0, ValueError), (1.0, ValueError), (80, ValueError), ("0.8", TypeError)])
def test_denoising_start_outside_zero_one(ours_i2i, value, error):
    with pytest.raises(error, match="`denoising_start` must"):
        i2i_call(ours_i2i, image=torch.zeros(1, 4, 32, 32), denoising_start=value)


@pytest.mark.parametrize("image", ["pil", "numpy", "pixel_tensor"])
def test_refiner_given_pixels_where_latents_are_needed(ours_refiner, theirs_refiner, image):
    """diffusers encodes the pixels and adds no noise (a silently wrong hand-off); we say what the hand-off needs."""
    pil = make_image()
    image = {
        "pil": pil,
        "numpy": torch.rand(1, 64, 64, 3).numpy(),
        "pixel_tensor": torch.rand(1, 3, 64, 64),
    }[image]
    i2i_call(theirs_refiner, image=image, denoising_start=0.8)  # diffusers runs
    with pytest.raises(ValueError, match=r'needs the base\'s noisy latents.*denoising_end=0.8, output_type="latent"'):
        i2i_call(ours_refiner, image=image, denoising_start=0.8)


def test_denoising_start_overrides_strength(ours_refiner, caplog):
    """As diffusers, `denoising_start` decides where the schedule starts; a non-default strength is logged as ignored."""
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="sdxl.pipelines.img2img"):
        with_strength = i2i_call(ours_refiner, image=latents, denoising_start=0.8, strength=0.9)
    assert "`strength=0.9` is ignored: `denoising_start=0.8`" in caplog.text
    without = i2i_call(ours_refiner, image=latents, denoising_start=0.8)
    assert (with_strength == without).all()


@pytest.mark.parametrize("image", ["a string", 3, [1, 2]])
def test_image_of_the_wrong_type(ours_i2i, image):
    with pytest.raises(TypeError, match="`image` must be a PIL image, a numpy array, a torch tensor"):
        i2i_call(ours_i2i, image=image)


def test_image_missing(ours_i2i):
    with pytest.raises(ValueError, match="`image` is required"):
        ours_i2i(prompt="a cat", num_inference_steps=2)


def test_generator_list_of_the_wrong_length(ours_i2i):
    gens = [torch.Generator().manual_seed(0)] * 3
    with pytest.raises(ValueError, match="list of 3 generators .* effective batch of 2"):
        i2i_call(ours_i2i, generator=gens, num_images_per_prompt=2)


@pytest.mark.parametrize("generator", ["one", "list"])
def test_image_batch_that_does_not_divide_the_batch(ours_i2i, generator):
    images = [make_image(seed=1), make_image(seed=2)]
    gen = torch.Generator().manual_seed(0) if generator == "one" else [torch.Generator() for _ in range(3)]
    with pytest.raises(ValueError, match=r"Cannot use 2 `image` rows for an effective batch of 3"):
        i2i_call(ours_i2i, image=images, num_images_per_prompt=3, generator=gen)


def test_refiner_unet_without_requires_aesthetics_score(ours_refiner, theirs_refiner):
    """A 5-id UNet given 6 ids: diffusers' error, rewritten to say what to flip (and how)."""
    pipe = StableDiffusionXLImg2ImgPipeline(**ours_refiner.components, requires_aesthetics_score=False,
                                            force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"trained with the refiner layout.*requires_aesthetics_score=True\)`"):
        i2i_call(pipe)
    theirs = type(theirs_refiner)(**theirs_refiner.components, requires_aesthetics_score=False)
    with pytest.raises(ValueError, match="added time embedding"):  # diffusers errors too (its hint says "disable")
        i2i_call(theirs)


def test_base_unet_with_requires_aesthetics_score(ours_i2i):
    pipe = StableDiffusionXLImg2ImgPipeline(**ours_i2i.components, requires_aesthetics_score=True)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"trained with the base layout.*requires_aesthetics_score=False\)`"):
        i2i_call(pipe)


def test_common_encode_with_too_few_generators(ours_i2i):
    with pytest.raises(ValueError, match="list of 1 generators was passed for 2 images to encode"):
        common.encode_image_latents(ours_i2i.vae, torch.zeros(2, 3, 64, 64), [torch.Generator()])


def test_bad_output_type(ours_i2i):
    with pytest.raises(ValueError, match="`output_type` must be one of"):
        i2i_call(ours_i2i, output_type="jpeg")
