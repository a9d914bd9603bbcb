"""Fixtures and helpers for the inpainting tests: a tiny 9-channel inpainting checkpoint, our and diffusers'
inpaint pipelines on the tiny base / inpaint / refiner folders, and a test image with its mask.

Import the fixtures into a test module (`from inpaint_fixtures import ...`); they are session-scoped.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch
from PIL import Image
from pipeline_parity import load_ours, load_theirs

SIZE = 64  # pixels; the tiny UNets' sample_size 32 x VAE scale factor 2, so also the pipelines' default size
STEPS = 4  # default strength 0.9999 keeps int(4 * 0.9999) = 3 of them


def make_inpaint_pipeline(folder, seed: int = 0):
    """A tiny diffusers StableDiffusionXLInpaintPipeline with a 9-channel UNet, saved to `folder`."""
    from diffusers import StableDiffusionXLInpaintPipeline

    te1, te2 = reference.make_text_encoders(seed)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=reference.make_vae(seed),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=reference.make_tokenizer(folder / "_vocab1"),
        tokenizer_2=reference.make_tokenizer(folder / "_vocab2", pad_token="!"),
        unet=reference.make_unet("inpaint", seed),
        scheduler=reference.make_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory):
    """Folder of a tiny SDXL inpainting checkpoint (9-channel UNet) saved by diffusers."""
    folder = tmp_path_factory.mktemp("tiny_inpaint")
    make_inpaint_pipeline(folder)
    return folder


def _theirs(folder):
    return load_theirs("StableDiffusionXLInpaintPipeline", folder)


def _ours(folder):
    return load_ours("StableDiffusionXLInpaintPipeline", folder)


@pytest.fixture(scope="session")
def theirs_base(tiny_base):
    """diffusers' inpaint pipeline on the tiny base (4-channel UNet: latent blending)."""
    return _theirs(tiny_base[0])


@pytest.fixture(scope="session")
def ours_base(tiny_base):
    return _ours(tiny_base[0])


@pytest.fixture(scope="session")
def theirs_nine(tiny_inpaint):
    """diffusers' inpaint pipeline on the 9-channel inpainting checkpoint."""
    return _theirs(tiny_inpaint)


@pytest.fixture(scope="session")
def ours_nine(tiny_inpaint):
    return _ours(tiny_inpaint)


@pytest.fixture(scope="session")
def theirs_refiner(tiny_refiner):
    """diffusers' inpaint pipeline on the tiny refiner (no text_encoder, aesthetic-score time ids)."""
    return _theirs(tiny_refiner[0])


@pytest.fixture(scope="session")
def ours_refiner(tiny_refiner):
    return _ours(tiny_refiner[0])


def test_image(size: int = SIZE, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with noise: structure the VAE keeps, so masked and kept areas differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + rng.integers(0, 55, (size, size, 3))
    return Image.fromarray(base.astype(np.uint8), "RGB")


def test_mask(size: int = SIZE, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Black with a white box (the part to repaint); RGB as masks loaded from PNG files usually are."""
    box = box or (size // 4, size // 4, 3 * size // 4, 5 * size // 8)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask.convert("RGB")


test_image.__test__ = False  # helpers, not tests
test_mask.__test__ = False


def call(pipe, **kwargs):
    """A small inpainting call: STEPS steps at SIZE, seed 0 on a CPU generator, "np" output unless told otherwise."""
    kwargs.setdefault("prompt", "a photo of a cat")
    kwargs.setdefault("image", test_image())
    kwargs.setdefault("mask_image", test_mask())
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**kwargs).images
