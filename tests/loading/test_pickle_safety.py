"""A pickle whose unpickling would create a marker file is refused by content, whatever its name, and
`allow_pickle=True` (torch.load(weights_only=True)) refuses it too: the marker never appears."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch

import sdxl
from sdxl.loading.weights import PickleRefusedError, load_checkpoint, read_header


class Canary:
    """Unpickling this calls os.system-free `open(marker, "w")` via builtins: a file appears if it runs."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw_pickle(marker) -> bytes:
    return pickle.dumps({"model.diffusion_model.x": Canary(str(marker))}, protocol=2)


def _zip_pickle(marker) -> bytes:
    # torch.save's zip container with the hostile pickle as data.pkl
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": Canary(str(marker))}, protocol=2)
            z.writestr(info, data)
    return out.getvalue()


NAMES = ["model.ckpt", "model.safetensors", "pytorch_model.bin", "model"]


@pytest.mark.parametrize("make", [_raw_pickle, _zip_pickle], ids=["raw", "zip"])
@pytest.mark.parametrize("name", NAMES)
def test_canary_refused_by_content_whatever_the_name(tmp_path, make, name):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(make(marker))
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        load_checkpoint(path)
    with pytest.raises(PickleRefusedError, match="pickle"):
        read_header(path)
    with pytest.raises(PickleRefusedError, match="not unpickled"):
        sdxl.StableDiffusionXLPipeline.from_single_file(path)
    assert not marker.exists()
    # with the opt-in, weights_only=True refuses the payload; there is no unsafe fallback
    with pytest.raises(PickleRefusedError, match="weights_only=True.*never falls back"):
        load_checkpoint(path, allow_pickle=True)
    assert not marker.exists()


def test_control_the_canary_does_fire_when_unpickled_unsafely(tmp_path):
    """Proves the payload is live, so the tests above could fail."""
    marker = tmp_path / "PWNED"
    pickle.loads(_raw_pickle(marker))  # deliberate, on our own payload
    assert marker.exists()


def test_allow_pickle_loads_a_plain_state_dict(tmp_path):
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)}
    for i, wrap in enumerate((sd, {"state_dict": sd})):
        path = tmp_path / f"plain{i}.ckpt"
        torch.save(wrap, path)
        with pytest.raises(PickleRefusedError):
            load_checkpoint(path)
        loaded = load_checkpoint(path, allow_pickle=True)
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_allow_pickle_needs_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_checkpoint(path, allow_pickle=True)


def test_old_torch_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "plain.ckpt"
    torch.save({"a": torch.zeros(1)}, path)
    monkeypatch.setattr(torch, "__version__", "2.9.1+cpu")
    with pytest.raises(PickleRefusedError, match="CVE-2025-32434"):
        load_checkpoint(path, allow_pickle=True)
    assert os.path.exists(path)
