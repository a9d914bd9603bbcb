"""The pipeline marks decoded images (before postprocessing) when, and only when, a watermarker is set."""

from __future__ import annotations

import sys

import pytest
import torch

import sdxl
from sdxl.watermark import StableDiffusionXLWatermarker


class RecordingWatermarker:
    """Stands in for the invisible-watermark encoder: records what it is given, shifts the image by a constant."""

    def __init__(self):
        self.seen = []

    def apply_watermark(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return (images - 0.5).clamp(-1, 1)


def _run(pipe, **kw):
    kw = {"height": 64, "width": 64} | kw
    return pipe("a red circle", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), **kw).images


def test_watermarker_sees_decoded_images_and_changes_output(ours):
    plain = _run(ours, output_type="pt")
    previous, ours.watermark = ours.watermark, RecordingWatermarker()
    try:
        marked = _run(ours, output_type="pt")
        latents = _run(ours, output_type="latent")
        assert len(ours.watermark.seen) == 1, "latent output must not be watermarked"
        decoded = ours.watermark.seen[0]
        assert decoded.shape == (1, 3, 64, 64) and decoded.min() < 0  # decoded, not yet postprocessed to [0, 1]
        assert torch.allclose(marked, ((decoded - 0.5).clamp(-1, 1) / 2 + 0.5).clamp(0, 1), atol=1e-6)
        assert not torch.allclose(marked, plain)
        assert latents.shape == (1, 4, 32, 32)
    finally:
        ours.watermark = previous


def test_default_follows_package_availability(tiny_base, monkeypatch):
    folder, _ = tiny_base
    monkeypatch.setattr("sdxl.pipelines.text2img.is_watermark_available", lambda: True)
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert isinstance(pipe.watermark, StableDiffusionXLWatermarker)
    monkeypatch.setattr("sdxl.pipelines.text2img.is_watermark_available", lambda: False)
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert pipe.watermark is None
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, add_watermarker=False)
    assert pipe.watermark is None


def test_forced_watermark_without_the_package_says_what_to_install(tiny_base, monkeypatch):
    folder, _ = tiny_base
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, add_watermarker=True)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ImportError, match="pip install invisible-watermark"):
        _run(pipe, height=64, width=256)  # watermarking starts at 256 px wide
