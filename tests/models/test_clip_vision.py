"""The CLIP image encoder (IP-Adapter's) and image processor against transformers: outputs, hidden states, loading a
folder transformers wrote (and the older files with a position-id buffer), pixel values."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

import sdxl
from sdxl.loading.weights import load_file

KWARGS = {
    "hidden_size": 32,
    "image_size": 28,
    "projection_dim": 24,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "patch_size": 14,
    "hidden_act": "gelu",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, transformers model) of a tiny CLIPVisionModelWithProjection saved by transformers."""
    torch.manual_seed(0)
    ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**KWARGS)).eval()
    ref.config._attn_implementation = "eager"
    folder = tmp_path_factory.mktemp("image_encoder")
    ref.save_pretrained(folder)
    return folder, ref


def test_outputs_match_transformers(saved):
    folder, ref = saved
    ours = sdxl.CLIPVisionModelWithProjection.from_pretrained(folder)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        mine, theirs = ours(pixels, output_hidden_states=True), ref(pixels, output_hidden_states=True)
    for a, b in [
        (mine.image_embeds, theirs.image_embeds),
        (mine.last_hidden_state, theirs.last_hidden_state),
        *zip(mine.hidden_states, theirs.hidden_states),
    ]:
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert len(mine.hidden_states) == len(theirs.hidden_states) == 4
    assert torch.equal(ours(pixels, return_dict=False)[0], mine.image_embeds)


def test_older_files_with_position_ids_load(saved, tmp_path):
    from safetensors.torch import save_file

    folder, ref = saved
    sd = load_file(folder / "model.safetensors")
    sd["vision_model.embeddings.position_ids"] = torch.arange(5)[None]  # what transformers 4.x saved
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(sd, str(tmp_path / "model.safetensors"))
    ours = sdxl.CLIPVisionModelWithProjection.from_pretrained(tmp_path)
    assert torch.equal(ours.visual_projection.weight, ref.visual_projection.weight)


def test_forward_errors(saved):
    ours = sdxl.CLIPVisionModelWithProjection.from_pretrained(saved[0])
    with pytest.raises(ValueError, match=r"Input image size \(32\*32\) doesn't match the model \(28\*28\)"):
        ours(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        ours(torch.zeros(1, 3, 28, 28), output_attentions=True)


PROCESSOR_KWARGS = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "resample": 3,
    "size": 224,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def _images():
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 255, (64, 100, 3), dtype=np.uint8)),  # upscaled, landscape
        PIL.Image.fromarray(rng.integers(0, 255, (90, 90), dtype=np.uint8)),  # grayscale
        rng.random((64, 64, 3)).astype(np.float32),  # floats in [0, 1]
        [PIL.Image.fromarray(rng.integers(0, 255, (230, 230, 3), dtype=np.uint8))] * 2,
    ]


@pytest.mark.parametrize("kwargs", [PROCESSOR_KWARGS, {}, {"size": {"height": 100, "width": 80}, "crop_size": 64}])
def test_image_processor_matches_transformers(kwargs):
    theirs, ours = transformers.CLIPImageProcessor(**kwargs), sdxl.CLIPImageProcessor(**kwargs)
    for image in _images():
        a = theirs(image, return_tensors="pt").pixel_values
        b = ours(image, return_tensors="pt").pixel_values
        assert a.shape == b.shape and torch.equal(a, b)


def test_image_processor_round_trip_and_errors(tmp_path):
    ours = sdxl.CLIPImageProcessor(size=64, crop_size=48)
    ours.save_pretrained(tmp_path)
    again = sdxl.CLIPImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    assert transformers.CLIPImageProcessor.from_pretrained(tmp_path).crop_size == {"height": 48, "width": 48}
    with pytest.raises(TypeError, match="unexpected arguments \\['do_magic'\\]"):
        sdxl.CLIPImageProcessor(do_magic=True)
    with pytest.raises(ValueError, match="Image values must lie in"):
        ours(np.full((8, 8, 3), 300.5))
    with pytest.raises(FileNotFoundError, match="No preprocessor_config.json"):
        sdxl.CLIPImageProcessor.from_pretrained(tmp_path / "nothing")
