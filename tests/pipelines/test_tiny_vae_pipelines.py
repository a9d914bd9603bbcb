"""The three pipelines with an AutoencoderTiny as `pipe.vae`, against diffusers' with theirs (2/255)."""

from __future__ import annotations

import diffusers
import pytest
import torch
from pipeline_parity import assert_images_match, call

import sdxl
from sdxl.models.vae_tiny import AutoencoderTiny, AutoencoderTinyConfig


@pytest.fixture(scope="module")
def tiny_vae_pair():
    # 4 channels and the same 2x scale as the tiny pipeline's VAE: two levels
    kwargs = {"encoder_block_out_channels": (8, 8), "decoder_block_out_channels": (8, 8),
              "num_encoder_blocks": (1, 1), "num_decoder_blocks": (1, 1)}
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderTiny(**kwargs).eval()
    ours = AutoencoderTiny(AutoencoderTinyConfig.from_dict(dict(theirs.config)))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("mode", ["text2img", "img2img", "inpaint"])
def test_pipelines_with_the_tiny_vae_match_diffusers(tiny_base, tiny_vae_pair, mode):
    classes = {"text2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"}
    ours_vae, theirs_vae = tiny_vae_pair
    ours = getattr(sdxl, classes[mode]).from_pretrained(tiny_base[0], vae=ours_vae)
    theirs = getattr(diffusers, classes[mode]).from_pretrained(
        tiny_base[0], vae=theirs_vae, torch_dtype=torch.float32, add_watermarker=False
    )
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if mode != "text2img":
        kwargs["image"] = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        kwargs["strength"] = 0.7
        kwargs["num_inference_steps"] = 3
    if mode == "inpaint":
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 16:48] = 1
        kwargs["mask_image"] = mask
    if mode == "img2img":  # img2img takes its size from the image
        def run(pipe):
            return pipe(prompt="a cat", output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).images
    else:
        def run(pipe):
            return call(pipe, **kwargs)
    assert_images_match(run(ours), run(theirs))
