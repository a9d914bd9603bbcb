"""sdxl.watermark against diffusers' StableDiffusionXLWatermarker (needs the optional invisible-watermark package)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sdxl.watermark import (
    WATERMARK_BITS,
    StableDiffusionXLWatermarker,
    decode_watermark,
    has_sdxl_watermark,
    is_watermark_available,
)


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, size, size) in [-1, 1]: smooth content, like a decoded picture rather than noise."""
    coarse = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(-1, 1)


def test_message_is_diffusers():
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS as REFERENCE_BITS

    assert WATERMARK_BITS == REFERENCE_BITS and len(WATERMARK_BITS) == 48


def test_small_images_pass_through_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    images = smooth_images(1, 64)
    assert StableDiffusionXLWatermarker().apply_watermark(images) is images


def test_missing_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    with pytest.raises(ImportError, match="pip install invisible-watermark.*add_watermarker=False"):
        StableDiffusionXLWatermarker().apply_watermark(smooth_images(1, 256))
    with pytest.raises(ImportError, match="invisible-watermark"):
        decode_watermark(np.zeros((256, 256, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("bad", "match"),
    [(torch.zeros(3, 256, 256), r"\(B, 3, H, W\).*\(3, 256, 256\)"), (np.zeros((1, 3, 256, 256)), "ndarray")],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        StableDiffusionXLWatermarker().apply_watermark(bad)


def test_decoder_input_checks():
    with pytest.raises(ValueError, match="at least 256x256"):
        decode_watermark(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        decode_watermark(np.zeros((256, 256), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        decode_watermark(torch.zeros(1, 3, 256, 256))


def test_availability_flag():
    import importlib.util

    assert is_watermark_available() == (importlib.util.find_spec("imwatermark") is not None)


@pytest.mark.parametrize("size", [256, 320])
def test_same_marks_as_diffusers(size):
    pytest.importorskip("imwatermark")
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker as Reference

    images = smooth_images(2, size)
    mine = StableDiffusionXLWatermarker().apply_watermark(images)
    ref = Reference().apply_watermark(images)
    assert mine.dtype == ref.dtype == torch.float32 and mine.device.type == "cpu"
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    assert (mine - images).abs().max() > 1 / 255


def test_decoder_reads_the_mark():
    pytest.importorskip("imwatermark")
    images = smooth_images(1, 1024)
    marked = StableDiffusionXLWatermarker().apply_watermark(images)[0]
    matching = sum(a == b for a, b in zip(decode_watermark(marked), WATERMARK_BITS))
    unmarked = sum(a == b for a, b in zip(decode_watermark(images[0]), WATERMARK_BITS))
    assert matching >= 44 and unmarked < 36, (matching, unmarked)  # measured 48 and 23 of 48
    assert has_sdxl_watermark(marked) and not has_sdxl_watermark(images[0])


def test_pipeline_output_with_watermark_equals_diffusers(tiny_base):
    """Watermark on, on both sides: the same pixels as diffusers, and the decoder reads SDXL's bits from ours."""
    pytest.importorskip("imwatermark")
    import diffusers

    import sdxl

    folder, _ = tiny_base
    kwargs = dict(num_inference_steps=2, height=256, width=256, output_type="pt")
    ours = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                                 add_watermarker=True)
    assert ours.watermark is not None  # on by default when the package is installed, as in diffusers
    images = []
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe("a red circle", generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0])
    assert (images[0] - images[1]).abs().max() <= 2 / 255
    bits = decode_watermark(images[0] * 2 - 1)  # the decoder takes the decoded range [-1, 1]
    assert sum(a == b for a, b in zip(bits, WATERMARK_BITS)) >= 44
