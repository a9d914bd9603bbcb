"""How the pipeline tests compare our outputs with diffusers': small fast calls and tolerances."""

from __future__ import annotations

import numpy as np
import torch

STEPS = 2
SIZE = 64  # pixels; the tiny VAE has scale factor 2, so 32x32 latents
PIXEL_TOL = 2  # images within 2/255 as uint8
FLOAT_TOL = 1e-4  # np / pt outputs and latents, fp32 on CPU


def call(pipe, **kwargs):
    """A small, fast call: 2 steps at 64x64, seed 0 on a CPU generator, "np" output unless told otherwise."""
    kwargs.setdefault("prompt", "a photo of a cat")
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("height", SIZE)
    kwargs.setdefault("width", SIZE)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**kwargs).images


def to_numpy(images) -> np.ndarray:
    """np arrays as they are; tensors to numpy; PIL lists to a uint8 (B, H, W, C) array."""
    if isinstance(images, np.ndarray):
        return images
    if isinstance(images, torch.Tensor):
        return images.float().cpu().numpy()
    return np.stack([np.asarray(image) for image in images])


def assert_images_match(ours_images, theirs_images) -> None:
    """Same shape; uint8 pixels within 2/255; float outputs also within FLOAT_TOL."""
    a, b = to_numpy(ours_images), to_numpy(theirs_images)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dtype == np.uint8:
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.max() <= PIXEL_TOL, f"max pixel difference {diff.max()}/255"
        return
    np.testing.assert_allclose(a, b, atol=FLOAT_TOL, rtol=0)
    if a.ndim == 4 and a.shape[-1] == 3:  # np images: also as uint8 pixels
        pixels = np.abs(np.round(a * 255) - np.round(b * 255))
        assert pixels.max() <= PIXEL_TOL


def assert_changes(images, baseline) -> None:
    """The argument under test moves diffusers' output by more than the pixel tolerance, so parity has teeth."""
    assert np.abs(to_numpy(images) - to_numpy(baseline)).max() > PIXEL_TOL / 255


def load_theirs(class_name: str, folder, **kwargs):
    """diffusers' pipeline class `class_name` from `folder`: fp32, no watermark, no progress bar."""
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(
        folder, torch_dtype=torch.float32, add_watermarker=False, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_ours(class_name: str, folder, **kwargs):
    """Our pipeline class of the same name from the same folder, fp32, no progress bar."""
    import sdxl

    pipe = getattr(sdxl, class_name).from_pretrained(folder, torch_dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
