"""save_pretrained (diffusers layout) and save_single_file: what they write loads back identically, in ours and
in diffusers."""

from __future__ import annotations

import json

import pytest
import torch

import sdxl
from sdxl.loading import keymaps
from sdxl.loading.save import save_pretrained, save_single_file

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _sd(model):
    return keymaps.normalize_clip_text(dict(model.state_dict())) if "CLIP" in type(model).__name__ else model.state_dict()


def _same(a, b):
    sa, sb = _sd(a), _sd(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def pipe(tiny_base):
    return sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)


def test_save_pretrained_round_trip_ours_and_diffusers(pipe, tiny_base, tmp_path):
    import diffusers

    out = pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    again = sdxl.StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32)
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(str(out), torch_dtype=torch.float32)
    for name in MODELS:
        _same(getattr(pipe, name), getattr(again, name))
        _same(getattr(theirs, name), getattr(again, name))
    assert dict(theirs.scheduler.config)["timestep_spacing"] == pipe.scheduler.config["timestep_spacing"]
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert theirs.tokenizer("a cat", padding="max_length", max_length=77).input_ids == ids
    ids2 = pipe.tokenizer_2("a cat", padding="max_length", max_length=77).input_ids
    assert theirs.tokenizer_2("a cat", padding="max_length", max_length=77).input_ids == ids2


def test_save_pretrained_variant(pipe, tmp_path):
    out = pipe.save_pretrained(tmp_path / "v", variant="fp16")
    assert (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (out / "text_encoder" / "model.fp16.safetensors").is_file()
    again = sdxl.StableDiffusionXLPipeline.from_pretrained(out, variant="fp16")
    _same(pipe.unet, again.unet)


def test_save_single_file_round_trip(pipe, tiny_base, tmp_path):
    path = pipe.save_single_file(tmp_path / "model.safetensors")
    again = sdxl.StableDiffusionXLPipeline.from_single_file(path, config=tiny_base[0])
    for name in MODELS:
        _same(getattr(pipe, name), getattr(again, name))


def test_save_single_file_keeps_the_configs_so_no_config_folder_is_needed(pipe, tmp_path):
    """The tiny model has non-SDXL sizes: it loads back from our file alone; the same tensors without our metadata
    (what other tools write) still need config=, as before."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = pipe.save_single_file(tmp_path / "model.safetensors")
    again = sdxl.StableDiffusionXLPipeline.from_single_file(path)
    for name in MODELS:
        _same(getattr(pipe, name), getattr(again, name))
        assert again.components[name].config == pipe.components[name].config
    assert type(again.scheduler) is type(pipe.scheduler)
    assert again.scheduler.config.to_json_dict() == pipe.scheduler.config.to_json_dict()
    with safe_open(str(path), "pt") as f:
        assert set(json.loads(f.metadata()["sdxl_configs"])) >= set(MODELS)
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(path)), str(bare), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="pass config="):
        sdxl.StableDiffusionXLPipeline.from_single_file(bare)


def test_save_errors(pipe, tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        save_single_file(pipe.components, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_single_file(pipe.components, tmp_path / "no" / "x.safetensors")
    with pytest.raises(ValueError, match="needs the unet"):
        save_single_file({**pipe.components, "unet": None}, tmp_path / "x.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_pretrained(pipe.components, tmp_path / "file")
    with pytest.raises(TypeError, match="cannot write component 'extra'"):
        save_pretrained({"extra": object()}, tmp_path / "out")
    with pytest.raises(TypeError, match="cannot write a Linear"):
        save_pretrained({"unet": torch.nn.Linear(1, 1)}, tmp_path / "out2")
    with pytest.raises(ValueError, match="q, k and v"):
        keymaps.to_original({"w": torch.zeros(1)}, {"w": keymaps.Rule("fused", keymaps.QKV, 0)})
