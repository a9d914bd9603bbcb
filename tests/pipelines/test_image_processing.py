"""sdxl.image against diffusers' VaeImageProcessor: postprocess to pil/np/pt, preprocess of PIL/np/pt inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl import image as ours


@pytest.fixture(scope="module")
def theirs():
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8)


@pytest.fixture(scope="module")
def decoded():
    """A decoded-VAE-like batch (B, 3, H, W) reaching past [-1, 1] so clamping matters."""
    return torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.2


@pytest.mark.parametrize("output_type", ["pt", "np", "latent"])
def test_postprocess_arrays(theirs, decoded, output_type):
    mine, ref = ours.postprocess(decoded, output_type), theirs.postprocess(decoded, output_type=output_type)
    assert type(mine) is type(ref)
    assert mine.dtype == ref.dtype and (mine == ref).all()


def test_postprocess_pil_rounds_as_diffusers(theirs, decoded):
    mine, ref = ours.postprocess(decoded, "pil"), theirs.postprocess(decoded, output_type="pil")
    assert [np.asarray(i).tolist() for i in mine] == [np.asarray(i).tolist() for i in ref]
    assert [i.mode for i in mine] == [i.mode for i in ref] == ["RGB", "RGB"]


def test_postprocess_unknown_output_type(decoded):
    with pytest.raises(ValueError, match="`output_type` must be one of .* but got 'jpeg'"):
        ours.postprocess(decoded, "jpeg")


def _pil(size, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


@pytest.mark.parametrize(
    ("image", "height", "width"),
    [
        (_pil((37, 29)), None, None),  # rounded down to multiples of 8: 24 x 32
        (_pil((64, 48)), 32, 40),  # LANCZOS resize
        ([_pil((40, 24), seed=1), _pil((40, 24), seed=2)], None, None),
        (_pil((16, 16), "RGBA"), None, None),  # 4 channels kept, as diffusers
    ],
    ids=["round_down", "resize", "list", "rgba"],
)
def test_preprocess_pil(theirs, image, height, width):
    mine = ours.preprocess(image, height, width)
    ref = theirs.preprocess(image, height, width)
    assert mine.dtype == ref.dtype and torch.equal(mine, ref)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).random((24, 16, 3), dtype=np.float32),
        np.random.default_rng(1).random((2, 20, 16, 3), dtype=np.float32),
        torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0)),
        torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1)),
        torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1,  # already in [-1, 1]
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)),  # latents pass through
    ],
    ids=["np_hwc", "np_batch", "pt_chw", "pt_round_down", "pt_signed", "pt_latents"],
)
def test_preprocess_arrays_and_tensors(theirs, image):
    mine = ours.preprocess(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates [-1, 1] tensors but takes them
        ref = theirs.preprocess(image)
    assert torch.equal(mine, ref)


def test_preprocess_rejects_other_inputs():
    with pytest.raises(TypeError, match="`image` must be a PIL image, a numpy array, a torch tensor"):
        ours.preprocess("cat.png")


def test_image_processor_surface(decoded):
    processor = ours.VaeImageProcessor(vae_scale_factor=2)
    assert torch.equal(processor.postprocess(decoded, "pt"), ours.postprocess(decoded, "pt"))
    assert processor.preprocess(_pil((9, 9))).shape == (1, 3, 8, 8)
