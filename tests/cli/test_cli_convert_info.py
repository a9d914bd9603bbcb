"""`sdxl info` and `sdxl convert` on tiny checkpoints, both directions, and their errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import sdxl
from sdxl.cli import main
from sdxl.loading import keymaps

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def converted(tiny_base, tmp_path_factory):
    """(diffusers folder, single file written by `sdxl convert`, folder converted back from it)."""
    root = tmp_path_factory.mktemp("convert")
    single = root / "model.safetensors"
    assert main(["convert", str(tiny_base[0]), str(single)]) == 0
    back = root / "back"
    assert main(["convert", str(single), str(back), "--config", str(tiny_base[0])]) == 0
    return tiny_base[0], single, back


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_convert_both_directions_keeps_the_weights(converted):
    folder, single, back = converted
    a = sdxl.StableDiffusionXLPipeline.from_pretrained(folder)
    b = sdxl.StableDiffusionXLPipeline.from_pretrained(back)
    for name in MODELS:
        sa = keymaps.normalize_clip_text(dict(getattr(a, name).state_dict()))
        sb = keymaps.normalize_clip_text(dict(getattr(b, name).state_dict()))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert any(k.startswith("conditioner.embedders.1.model.") for k in load_file(str(single)))


def test_info_on_folder_and_single_file(converted, capsys):
    folder, single, _ = converted
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(folder)
    for path, layout in ((folder, "diffusers folder"), (single, "single file")):
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"SDXL base ({layout})" in out
        assert "F32" in out and "text encoders: yes; VAE: yes" in out and "no NaN or Inf" in out
        for name in MODELS:
            assert f"{_params(getattr(pipe, name)):,} parameters" in out, (name, out)


def test_info_reports_nan_and_inpaint(converted, tmp_path, capsys):
    _, single, _ = converted
    sd = load_file(str(single))
    key = keymaps.UNET_PREFIX + "out.2.bias"
    sd[key] = sd[key].clone()
    sd[key][0] = float("inf")
    bad = tmp_path / "inf.safetensors"
    save_file(sd, str(bad))
    assert main(["info", str(bad)]) == 2
    assert f"NaN or Inf values in {key}" in capsys.readouterr().err
    assert main(["info", str(bad), "--no-value-check"]) == 0
    assert "values:" not in capsys.readouterr().out
    conv = keymaps.UNET_PREFIX + "input_blocks.0.0.weight"
    sd[conv] = torch.zeros(sd[conv].shape[0], 9, *sd[conv].shape[2:])
    inpaint = tmp_path / "inpaint.safetensors"
    save_file(sd, str(inpaint))
    assert main(["info", str(inpaint), "--no-value-check"]) == 0
    assert "SDXL inpaint (single file)" in capsys.readouterr().out


def test_info_refiner_folder(tiny_refiner, capsys):
    assert main(["info", str(tiny_refiner[0])]) == 0
    out = capsys.readouterr().out
    assert "SDXL refiner (diffusers folder)" in out and "text_encoder_2" in out and "  text_encoder " not in out


def test_pickle_needs_allow_pickle(converted, tmp_path, capsys):
    _, single, _ = converted
    ckpt = tmp_path / "model.ckpt"
    torch.save(load_file(str(single)), ckpt)
    assert main(["info", str(ckpt)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["info", str(ckpt), "--allow-pickle"]) == 0
    assert "SDXL base (single file)" in capsys.readouterr().out


def test_convert_and_info_errors(converted, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder, single, back = converted
    bare = tmp_path / "bare.safetensors"  # another tool's file of the same tensors
    save_file(load_file(str(single)), str(bare), metadata={"format": "pt"})
    assert main(["convert", str(single), str(tmp_path / "ours")]) == 0  # our file carries its configs
    cases = [
        (["info", str(tmp_path / "absent")], "does not exist"),
        (["convert", str(tmp_path / "absent"), str(tmp_path / "x")], "does not exist"),
        (["convert", str(folder), str(tmp_path / "out.bin")], "must end in .safetensors"),
        (["convert", str(folder), str(single)], "exists"),
        (["convert", str(single), str(back)], "not an empty folder"),
        (["convert", str(bare), str(tmp_path / "new")], "pass config="),  # tiny sizes, and no stored configs
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert main(["info", str(raw)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_convert_refiner_both_directions(tiny_refiner, tmp_path, capsys):
    import json

    from sdxl.loading.diffusers import load_pipeline_components

    folder = tiny_refiner[0]
    single = tmp_path / "refiner.safetensors"
    assert main(["convert", str(folder), str(single)]) == 0
    assert any(k.startswith("conditioner.embedders.0.model.") for k in load_file(str(single)))
    back = tmp_path / "back"
    assert main(["convert", str(single), str(back), "--config", str(folder)]) == 0
    index = json.loads((back / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["requires_aesthetics_score"] is True
    assert index["text_encoder"] == [None, None] and index["force_zeros_for_empty_prompt"] is False
    a, _ = load_pipeline_components(folder)
    b, _ = load_pipeline_components(back)
    for name in ("unet", "vae", "text_encoder_2"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
