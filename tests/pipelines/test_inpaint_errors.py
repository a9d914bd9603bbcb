"""Bad input to StableDiffusionXLInpaintPipeline: each a clear ValueError/TypeError naming the value and the fix."""

from __future__ import annotations

import types

import inpaint_fixtures as fx
import numpy as np
import pytest
import torch
from inpaint_fixtures import SIZE, call, test_image, test_mask

tiny_inpaint, ours_base, ours_nine, theirs_nine = fx.tiny_inpaint, fx.ours_base, fx.ours_nine, fx.theirs_nine
theirs_base = fx.theirs_base


def test_mask_of_another_size(ours_nine):
    with pytest.raises(ValueError, match=r"`mask_image` is 32x32 \(height x width\) but `image` is 64x64"):
        call(ours_nine, mask_image=test_mask(32))
    with pytest.raises(ValueError, match="`mask_image` is 64x48"):
        call(ours_nine, mask_image=np.ones((SIZE, 48), dtype=np.float32))


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_0_1(ours_nine, strength):
    with pytest.raises(ValueError, match=rf"`strength`.*{strength}"):
        call(ours_nine, strength=strength)


def test_strength_that_keeps_no_step(ours_nine):
    with pytest.raises(ValueError, match="strength 0.1 keeps 0 of the steps"):
        call(ours_nine, strength=0.1)


def test_masked_image_latents_with_a_4_channel_unet(ours_base, theirs_base, caplog):
    """Accepted as diffusers accepts them (its own tests pass them), with a warning that they do nothing."""
    latents = torch.zeros(1, 4, SIZE // 2, SIZE // 2)
    with caplog.at_level("WARNING", logger="sdxl.pipelines.inpaint_steps"):
        mine = call(ours_base, masked_image_latents=latents)
    assert "has no effect with a 4-channel UNet" in caplog.text
    np.testing.assert_allclose(mine, call(theirs_base, masked_image_latents=latents), atol=1e-4, rtol=0)


def test_masked_image_latents_not_a_tensor(ours_nine):
    with pytest.raises(TypeError, match="`masked_image_latents` must be a \\(B, C, h, w\\) tensor"):
        call(ours_nine, masked_image_latents=np.zeros((1, 4, 32, 32)))


def test_nine_channel_inputs_that_do_not_add_up(ours_nine, theirs_nine):
    """An RGB tensor mask keeps 3 channels: 4 + 3 + 4 != 9 (diffusers' own check, with the numbers)."""
    rgb_mask = torch.from_numpy(np.asarray(test_mask(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with pytest.raises(ValueError, match=r"latents \(4\) \+ mask \(3\) \+ masked-image latents \(4\) = 11"):
        call(ours_nine, mask_image=rgb_mask)
    with pytest.raises(ValueError, match="Incorrect configuration settings"):  # diffusers refuses it too
        call(theirs_nine, mask_image=rgb_mask)


def test_rgb_tensor_mask_with_a_4_channel_unet(ours_base):
    rgb_mask = torch.ones(1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="The mask has 3 channels after preprocessing; it needs 1"):
        call(ours_base, mask_image=rgb_mask)


def test_mask_image_missing(ours_nine):
    with pytest.raises(ValueError, match="`mask_image` is required"):
        call(ours_nine, mask_image=None)


def test_image_missing(ours_nine):
    with pytest.raises(ValueError, match="`image` is required"):
        call(ours_nine, image=None)


def test_image_of_another_type(ours_nine):
    with pytest.raises(TypeError, match="`image` must be a PIL image, a numpy array, a torch tensor.*str"):
        call(ours_nine, image="cat.png")


def test_rgba_image(ours_nine):
    with pytest.raises(ValueError, match="PIL image in mode 'RGBA'; pass an RGB image"):
        call(ours_nine, image=test_image().convert("RGBA"))


def test_denoising_start_not_before_end(ours_nine):
    with pytest.raises(ValueError, match=r"`denoising_start` \(0.8\) must be smaller than `denoising_end` \(0.5\)"):
        call(ours_nine, denoising_start=0.8, denoising_end=0.5)
    with pytest.raises(ValueError, match="`denoising_start` must lie strictly between 0 and 1"):
        call(ours_nine, denoising_start=1.5)


def test_padding_mask_crop_needs_pil(ours_nine):
    with pytest.raises(ValueError, match="both must be PIL images.*image: ndarray"):
        call(ours_nine, image=np.zeros((SIZE, SIZE, 3), dtype=np.float32), padding_mask_crop=4, output_type="pil")
    with pytest.raises(ValueError, match="`output_type` must be 'pil', but got 'np'"):
        call(ours_nine, padding_mask_crop=4, output_type="np")
    with pytest.raises(ValueError, match="`padding_mask_crop` must be a number of pixels >= 0, but got -1"):
        call(ours_nine, padding_mask_crop=-1, output_type="pil")


def test_padding_mask_crop_with_an_empty_mask(ours_nine):
    with pytest.raises(ValueError, match="all black"):
        call(ours_nine, mask_image=test_mask(box=(0, 0, 0, 0)), padding_mask_crop=4, output_type="pil")


def test_nine_channels_with_latent_image_and_no_masked_image_latents(ours_nine):
    latents = torch.zeros(1, 4, SIZE // 2, SIZE // 2)
    with pytest.raises(ValueError, match="needs the masked image, but `image` holds latents"):
        call(ours_nine, image=latents, denoising_start=0.5)


def test_latent_image_of_another_size(ours_base):
    latents = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ValueError, match=r"`image` holds latents of \(16, 16\).*32x32 pixels, but this call is for 64x64"):
        call(ours_base, image=latents, denoising_start=0.5)


def test_user_latents_of_another_shape(ours_nine):
    with pytest.raises(ValueError, match=r"`latents` have shape \(1, 4, 8, 8\), but this call needs \(1, 4, 32, 32\)"):
        call(ours_nine, latents=torch.zeros(1, 4, 8, 8))


def test_masks_that_do_not_divide_the_batch(ours_nine):
    masks = [test_mask(), test_mask()]
    with pytest.raises(ValueError, match="Cannot use 2 `mask` rows for an effective batch of 3 images"):
        call(ours_nine, mask_image=masks, num_images_per_prompt=3, generator=None)


def test_generator_list_of_the_wrong_length(ours_nine):
    generators = [torch.Generator().manual_seed(0)] * 3
    with pytest.raises(ValueError, match="A list of 3 generators was passed for an effective batch of 1"):
        call(ours_nine, generator=generators)


def test_unet_with_other_input_channels(ours_nine):
    pipe = type(ours_nine)(**ours_nine.components)
    pipe.unet = types.SimpleNamespace(config=types.SimpleNamespace(**{**ours_nine.unet.config.to_dict(), "in_channels": 8}))
    with pytest.raises(ValueError, match="The UNet has 8 input channels; inpainting needs a 4-channel UNet"):
        call(pipe)


def test_unknown_callback_tensor(ours_nine):
    with pytest.raises(ValueError, match=r"may only name .*'mask', 'masked_image_latents', 'denoised'\].*\['noise'\]"):
        call(ours_nine, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"])
