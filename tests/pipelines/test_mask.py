"""Mask preprocessing and padding_mask_crop geometry against diffusers' VaeImageProcessor (the inpaint pipelines'
`mask_processor` and `image_processor`): exact equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl import image as ours
from sdxl import image_mask


@pytest.fixture(scope="module")
def theirs_mask():
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)


@pytest.fixture(scope="module")
def theirs_image():
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8)


@pytest.fixture(scope="module")
def ours_mask():
    return ours.VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)


def _pil(size, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


def _box_mask(size, box, mode="L"):
    """A black mask of `size` (w, h) with a white rectangle `box` (x1, y1, x2, y2)."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask.convert(mode)


def _rand(shape, seed):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


MASKS = {
    "pil_L_resized": (_pil((50, 38), "L"), 32, 40),
    "pil_rgb": (_pil((40, 24)), None, None),
    "pil_list": ([_pil((24, 24), "L", 1), _pil((24, 24), "L", 2)], 16, 16),
    "np_hw": (_rand((24, 16), 0), None, None),
    "np_hw1": (_rand((24, 16, 1), 1), 32, 32),
    "np_bhw": (_rand((2, 24, 16), 2), None, None),
    "np_bhw1": (_rand((2, 24, 16, 1), 3), None, None),
    "pt_hw": (torch.from_numpy(_rand((24, 16), 4)), None, None),
    "pt_1hw": (torch.from_numpy(_rand((1, 20, 16), 5)), 16, 16),
    "pt_b1hw": (torch.from_numpy(_rand((2, 1, 16, 24), 6)), None, None),
    "pt_list_hw": ([torch.from_numpy(_rand((16, 16), 7)), torch.from_numpy(_rand((16, 16), 8))], None, None),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_preprocess_matches_diffusers(theirs_mask, ours_mask, name):
    mask, height, width = MASKS[name]
    mine = ours_mask.preprocess(mask, height=height, width=width)
    ref = theirs_mask.preprocess(mask, height=height, width=width)
    assert mine.shape == ref.shape and mine.shape[1] == 1
    assert mine.dtype == ref.dtype and torch.equal(mine, ref)
    assert set(mine.unique().tolist()) <= {0.0, 1.0}


def test_mask_preprocess_does_not_binarize_before_the_resize(theirs_mask, ours_mask):
    """A hard-edged mask downscaled with LANCZOS: the ringing is thresholded after the resize, as diffusers."""
    mask = _box_mask((61, 61), (13, 7, 40, 33))
    mine, ref = ours_mask.preprocess(mask, 24, 24), theirs_mask.preprocess(mask, 24, 24)
    assert torch.equal(mine, ref)


@pytest.mark.parametrize("blur_factor", [1, 4, 9])
def test_blur_matches_diffusers(theirs_mask, ours_mask, blur_factor):
    mask = _box_mask((48, 40), (10, 8, 30, 24))
    mine, ref = ours_mask.blur(mask, blur_factor=blur_factor), theirs_mask.blur(mask, blur_factor=blur_factor)
    assert np.array_equal(np.asarray(mine), np.asarray(ref))
    assert not np.array_equal(np.asarray(mine), np.asarray(mask))  # the blur does something


def test_blur_rejects_a_tensor():
    with pytest.raises(TypeError, match="`blur` takes a PIL image"):
        image_mask.blur(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("size", "box", "width", "height", "pad"),
    [
        ((64, 64), (20, 24, 30, 40), 64, 64, 0),  # tall box grown in width
        ((64, 64), (10, 30, 50, 36), 64, 64, 4),  # wide box grown in height
        ((80, 48), (70, 2, 80, 10), 64, 32, 8),  # at the right edge: shifted back inside
        ((48, 80), (2, 0, 10, 6), 32, 64, 3),  # at the top-left corner
        ((64, 64), (0, 0, 64, 64), 64, 32, 0),  # all masked
        ((96, 64), (40, 20, 41, 21), 32, 32, 32),  # one pixel, padding past the image
    ],
)
def test_get_crop_region_matches_diffusers(theirs_mask, size, box, width, height, pad):
    mask = _box_mask(size, box, mode="RGB")
    mine = image_mask.get_crop_region(mask, width, height, pad=pad)
    assert mine == theirs_mask.get_crop_region(mask, width, height, pad=pad)
    assert all(isinstance(v, int) for v in mine)


def test_get_crop_region_of_an_empty_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="padding_mask_crop.*all black"):
        image_mask.get_crop_region(Image.new("L", (32, 32), 0), 32, 32, pad=4)


@pytest.mark.parametrize("resize_mode", ["default", "fill", "crop"])
@pytest.mark.parametrize("crops_coords", [None, (8, 4, 40, 28)])
def test_image_preprocess_with_crop_and_resize_mode(theirs_image, resize_mode, crops_coords):
    image = _pil((48, 36), seed=3)
    mine = ours.VaeImageProcessor(8).preprocess(image, 32, 48, resize_mode=resize_mode, crops_coords=crops_coords)
    ref = theirs_image.preprocess(image, 32, 48, resize_mode=resize_mode, crops_coords=crops_coords)
    assert torch.equal(mine, ref)


@pytest.mark.parametrize("resize_mode", ["fill", "crop"])
def test_mask_preprocess_with_crop_and_resize_mode(theirs_mask, ours_mask, resize_mode):
    mask = _box_mask((48, 36), (10, 6, 30, 20))
    region = theirs_mask.get_crop_region(mask, 24, 16, pad=2)
    mine = ours_mask.preprocess(mask, 16, 24, resize_mode=resize_mode, crops_coords=region)
    ref = theirs_mask.preprocess(mask, 16, 24, resize_mode=resize_mode, crops_coords=region)
    assert torch.equal(mine, ref)


def test_resize_mode_errors():
    with pytest.raises(ValueError, match="`resize_mode` must be one of .* but got 'stretch'"):
        ours.preprocess(_pil((16, 16)), resize_mode="stretch")
    with pytest.raises(ValueError, match="`resize_mode` 'fill' works on PIL images only"):
        ours.preprocess(torch.rand(1, 3, 16, 16), resize_mode="fill")


@pytest.mark.parametrize("crop_coords", [None, (8, 4, 40, 36)])
def test_apply_overlay_matches_diffusers(theirs_image, crop_coords):
    init_image, generated = _pil((48, 40), seed=4), _pil((32, 32), seed=5)
    if crop_coords is None:
        generated = _pil((48, 40), seed=5)
    mask = image_mask.blur(_box_mask((48, 40), (12, 8, 30, 30)), 2)
    mine = ours.VaeImageProcessor(8).apply_overlay(mask, init_image, generated, crop_coords)
    ref = theirs_image.apply_overlay(mask, init_image, generated, crop_coords)
    assert mine.mode == ref.mode == "RGB" and mine.size == ref.size == init_image.size
    assert np.array_equal(np.asarray(mine), np.asarray(ref))
    # outside the mask the original pixels are kept
    assert np.array_equal(np.asarray(mine)[0, 0], np.asarray(init_image)[0, 0])


def test_masked_image_and_latent_mask():
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    masked = image_mask.masked_image(image, mask)
    assert torch.equal(masked[..., 2:6, 2:6], torch.zeros(1, 3, 4, 4))
    assert torch.equal(masked[..., :2, :], image[..., :2, :])
    small = image_mask.mask_latents(mask, 4, 4)
    assert torch.equal(small, torch.nn.functional.interpolate(mask, size=(4, 4), mode="nearest"))
