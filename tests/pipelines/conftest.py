"""Session fixtures: our StableDiffusionXLPipeline and diffusers' one, loaded from the same tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

import sdxl


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are all overhead: one thread is ~5x faster than two on 2 shared cores (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def theirs(tiny_base):
    """diffusers' pipeline loaded from the tiny folder (no watermark), separate from the session fixture's object."""
    import diffusers

    folder, _ = tiny_base
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ours(tiny_base):
    """Our pipeline from the same folder: every component ours."""
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe

