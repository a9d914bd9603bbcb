"""LCMScheduler in the three pipelines, as diffusers users run it: an LCM-distilled UNet (guidance embedding, no CFG)
in few steps, custom timesteps, img2img strength, and the LCM-LoRA set-up (a plain UNet, guidance 1)."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call, load_ours, load_theirs
from reference import unet_kwargs

import sdxl


@pytest.fixture(scope="module")
def lcm_unet_folder(tmp_path_factory):
    """A tiny base UNet with a guidance embedding (time_cond_proj_dim), as LCM-SDXL has, saved by diffusers."""
    folder = tmp_path_factory.mktemp("lcm_unet")
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(**unet_kwargs("base"), time_cond_proj_dim=32).save_pretrained(folder)
    return folder


def with_lcm(pipe, library):
    pipe.scheduler = library.LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def lcm_pair(class_name, tiny_base, lcm_unet_folder):
    theirs = load_theirs(
        class_name, tiny_base[0], unet=diffusers.UNet2DConditionModel.from_pretrained(lcm_unet_folder)
    )
    ours = load_ours(class_name, tiny_base[0], unet=sdxl.UNet2DConditionModel.from_pretrained(lcm_unet_folder))
    return with_lcm(ours, sdxl), with_lcm(theirs, diffusers)


def test_text_to_image_with_an_lcm_unet_matches_diffusers(tiny_base, lcm_unet_folder):
    ours, theirs = lcm_pair("StableDiffusionXLPipeline", tiny_base, lcm_unet_folder)
    assert isinstance(ours.scheduler, sdxl.LCMScheduler)
    ref = call(theirs, num_inference_steps=4, guidance_scale=1.5)
    assert_images_match(call(ours, num_inference_steps=4, guidance_scale=1.5), ref)
    assert_changes(
        ref, call(theirs, num_inference_steps=4, guidance_scale=1.5, generator=torch.Generator().manual_seed(1))
    )
    custom = {"num_inference_steps": None, "timesteps": [999, 499]}
    assert_images_match(call(ours, **custom), call(theirs, **custom))


def test_image_to_image_and_inpainting_with_lcm_match_diffusers(tiny_base, lcm_unet_folder):
    image = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    image_t = torch.from_numpy(image).permute(0, 3, 1, 2)
    for class_name, extra in (
        ("StableDiffusionXLImg2ImgPipeline", {"image": image_t, "strength": 0.5}),
        (
            "StableDiffusionXLInpaintPipeline",
            {"image": image_t, "mask_image": torch.ones(1, 1, 64, 64), "strength": 0.75},
        ),
    ):
        ours, theirs = lcm_pair(class_name, tiny_base, lcm_unet_folder)
        kwargs = {"prompt": "a cat", "num_inference_steps": 4, "guidance_scale": 1.0, "output_type": "np", **extra}
        got = ours(**kwargs, generator=torch.Generator().manual_seed(0)).images
        assert_images_match(got, theirs(**kwargs, generator=torch.Generator().manual_seed(0)).images)


def test_lcm_lora_set_up_plain_unet_guidance_one_matches_diffusers(tiny_base):
    """What LCM-LoRA users run: the model's own UNet, LCMScheduler, guidance 1 (CFG off), 4 steps."""
    ours = with_lcm(load_ours("StableDiffusionXLPipeline", tiny_base[0]), sdxl)
    theirs = with_lcm(load_theirs("StableDiffusionXLPipeline", tiny_base[0]), diffusers)
    assert_images_match(call(ours, num_inference_steps=4, guidance_scale=1.0),
                        call(theirs, num_inference_steps=4, guidance_scale=1.0))  # fmt: skip


def test_custom_sigmas_with_lcm_are_refused_clearly(tiny_base):
    ours = with_lcm(load_ours("StableDiffusionXLPipeline", tiny_base[0]), sdxl)
    with pytest.raises(ValueError, match="sigmas"):
        call(ours, num_inference_steps=None, sigmas=[14.6, 1.0, 0.0])
