"""Fixtures and helpers for the image-to-image and refiner tests: our and diffusers' img2img pipelines on the tiny
base and refiner folders, a test image, and a parity `check`.

Import the fixtures into a test module (`from img2img_fixtures import ...`); they are session-scoped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_parity import assert_changes, assert_images_match, load_ours, load_theirs, to_numpy

SIZE = 64  # pixels; the tiny VAE has scale factor 2, so 32x32 latents
STEPS = 10  # strength 0.3 keeps int(10 * 0.3) = 3 of them


def make_image(size: int = SIZE, seed: int = 0) -> Image.Image:
    """A smooth RGB test image: colour gradients plus a little seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 0.8 + 0.2 * rng.random((size, size, 3))
    return Image.fromarray((rgb.clip(0, 1) * 255).round().astype(np.uint8))


def _theirs(folder):
    return load_theirs("StableDiffusionXLImg2ImgPipeline", folder)


def _ours(folder):
    return load_ours("StableDiffusionXLImg2ImgPipeline", folder)


@pytest.fixture(scope="session")
def theirs_i2i(tiny_base):
    """diffusers' StableDiffusionXLImg2ImgPipeline on the tiny base folder."""
    return _theirs(tiny_base[0])


@pytest.fixture(scope="session")
def ours_i2i(tiny_base):
    """Our StableDiffusionXLImg2ImgPipeline on the tiny base folder."""
    return _ours(tiny_base[0])


@pytest.fixture(scope="session")
def theirs_refiner(tiny_refiner):
    """diffusers' refiner (no text_encoder/tokenizer, requires_aesthetics_score) on the tiny refiner folder."""
    return _theirs(tiny_refiner[0])


@pytest.fixture(scope="session")
def ours_refiner(tiny_refiner):
    """Our refiner on the tiny refiner folder."""
    return _ours(tiny_refiner[0])


@pytest.fixture(scope="session")
def init_image():
    return make_image()


def i2i_call(pipe, **kwargs):
    """A small img2img call: 10 steps, seed 0 on a CPU generator, "np" output, the test image, unless told."""
    kwargs.setdefault("prompt", "a photo of a cat")
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    if "image" not in kwargs:
        kwargs["image"] = make_image()
    return pipe(**kwargs).images


def check(ours, theirs, baseline=None, **kwargs):
    """Our and diffusers' images for the same call match; with a baseline, diffusers' image moved away from it."""
    mine, ref = i2i_call(ours, **kwargs), i2i_call(theirs, **kwargs)
    assert_images_match(mine, ref)
    if baseline is not None:
        assert_changes(ref, baseline)
    return mine, ref


def max_pixel_diff(a, b) -> int:
    """Largest difference as uint8 pixels (floats in [0, 1] are rounded to 255ths first)."""
    a, b = to_numpy(a), to_numpy(b)
    if a.dtype != np.uint8:
        a, b = np.round(a * 255), np.round(b * 255)
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
