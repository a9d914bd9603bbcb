"""safetensors reading: dtypes, zero-copy mapping, sharded checkpoints, and every way a file can be bad."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file as reference_load_file
from safetensors.torch import save_file

from sdxl.loading.weights import (
    DTYPES,
    PickleRefusedError,
    load_file,
    load_sharded,
    load_weights,
    read_header,
    sniff_format,
)

ALL_DTYPES = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "f64": torch.float64,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
    "f8": torch.float8_e4m3fn,
}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, dtype in ALL_DTYPES.items():
        x = torch.randn(3, 5, generator=g) * 10
        out[name] = (x > 0) if dtype is torch.bool else x.to(dtype)
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 4)
    return out


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    return path


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _write_raw(path, header: dict, data: bytes, header_len: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)


def test_every_supported_dtype_round_trips(good_file):
    ours = load_file(good_file)
    ref = reference_load_file(str(good_file))
    assert list(ours) == list(read_header(good_file)[0])
    assert ours.keys() == ref.keys()
    for k in ref:
        assert _bitwise_equal(ours[k], ref[k]), k
    assert {DTYPES[h["dtype"]][0] for h in read_header(good_file)[0].values()} == {*ALL_DTYPES.values()}


def test_cast_touches_floating_tensors_only(good_file):
    out = load_file(good_file, dtype=torch.bfloat16)
    ref = reference_load_file(str(good_file))
    for k, v in ref.items():
        want = torch.bfloat16 if v.is_floating_point() else v.dtype
        assert out[k].dtype == want, k
        assert _bitwise_equal(out[k], v.to(want)), k


def test_tensors_are_views_of_the_mapped_file(good_file):
    """No copy: each tensor's address is the file mapping's base plus its header offset."""
    header, _ = read_header(good_file)
    out = load_file(good_file)
    names = [k for k in header if out[k].numel()]
    base = out[names[0]].data_ptr() - header[names[0]]["data_offsets"][0]
    for k in names:
        assert out[k].data_ptr() - base == header[k]["data_offsets"][0], k


def test_metadata_is_returned(good_file):
    assert read_header(good_file)[1] == {"format": "pt"}


# ---- sharded ------------------------------------------------------------------------------------------------------


def _write_shards(folder, tensors, n=3):
    keys = list(tensors)
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in keys[i::n]}, str(folder / name))
        weight_map.update({k: name for k in keys[i::n]})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index, weight_map


def test_sharded_checkpoint_loads_every_shard(tmp_path):
    tensors = _tensors()
    index, _ = _write_shards(tmp_path, tensors)
    out = load_weights(index, dtype=torch.float16)
    assert out.keys() == tensors.keys()
    for k, v in tensors.items():
        assert _bitwise_equal(out[k], v.to(torch.float16) if v.is_floating_point() else v), k


def test_missing_shard_is_named(tmp_path):
    index, weight_map = _write_shards(tmp_path, _tensors())
    gone = sorted(set(weight_map.values()))[1]
    (tmp_path / gone).unlink()
    with pytest.raises(FileNotFoundError, match=gone):
        load_sharded(index)


def test_shard_without_an_indexed_tensor(tmp_path):
    index, weight_map = _write_shards(tmp_path, _tensors())
    weight_map["ghost.weight"] = min(weight_map.values())
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="ghost.weight"):
        load_sharded(index)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"metadata": {}}), json.dumps({"weight_map": [1]})])
def test_bad_index(tmp_path, content):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        load_sharded(index)


# ---- refusing pickles (by content) --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.safetensors", "pytorch_model.bin", "model.ckpt"])
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw"])
def test_pickles_are_refused_by_content(tmp_path, name, kind):
    path = tmp_path / name
    state = {"w": torch.ones(2)}
    if kind == "zip":
        torch.save(state, path)
    elif kind == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with pytest.raises(PickleRefusedError, match="only .safetensors") as e:
        load_file(path)
    assert str(path) in str(e.value)


def test_safetensors_content_loads_whatever_the_name(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.bin"
    save_file({"w": torch.arange(4.0)}, str(path))
    assert sniff_format(path) == "safetensors"
    assert torch.equal(load_file(path)["w"], torch.arange(4.0))


def test_header_length_that_looks_like_a_pickle_opcode_is_still_safetensors(tmp_path):
    """A header of exactly 0x0280 bytes starts the file with 0x80 0x02, the pickle protocol-2 magic."""
    tensor = torch.arange(3.0)
    base = {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}
    raw = json.dumps(base).encode()
    raw += b" " * (0x280 - len(raw))
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tensor.numpy().tobytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert torch.equal(load_file(path)["w"], tensor)


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ValueError, match="Git LFS"):
        load_file(path)


# ---- corrupt files ------------------------------------------------------------------------------------------------

W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    "header, data, header_len, match",
    [
        ({"w": W}, b"\0" * 8, None, "'w' ends at byte 16 .* only 8 data bytes"),
        ({"w": W}, b"\0" * 20, None, "cover 16 data bytes but the file has 20"),
        ({"w": {**W, "dtype": "C64"}}, b"\0" * 16, None, "tensor 'w' has dtype 'C64'"),
        ({"w": {**W, "shape": [2, 3]}}, b"\0" * 16, None, "'w' .* needs 24 bytes"),
        ({"w": {**W, "shape": [-1, 2]}}, b"\0" * 16, None, "'w' has an invalid shape"),
        ({"w": {**W, "data_offsets": [4, 0]}}, b"\0" * 16, None, "'w' has invalid data_offsets"),
        ({"w": {"dtype": "F32"}}, b"", None, "'w' has no dtype/shape/data_offsets"),
        ({"a": W, "b": W}, b"\0" * 16, None, "'b' starts at data byte 0, expected 16"),
        ({"a": W, "b": {**W, "data_offsets": [20, 36]}}, b"\0" * 36, None, "'b' starts at data byte 20"),
        ({"w": W, "__metadata__": {"x": 1}}, b"\0" * 16, None, "__metadata__"),
        ({"w": W}, b"\0" * 16, 10**9, "exceeds the 100000000-byte limit"),
        ({"w": W}, b"\0" * 16, 5000, "header length 5000 exceeds the file size"),
        # a huge claimed tensor in a small file fails on the header, before any allocation
        ({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"", None, "ends at byte"),
    ],
)
def test_corrupt_headers(tmp_path, header, data, header_len, match):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data, header_len)
    with pytest.raises(ValueError, match=match) as e:
        load_file(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x01\x02", b'\x05\0\0\0\0\0\0\0{"a":', b"\x04\0\0\0\0\0\0\0[1,2"])
def test_tiny_or_garbled_files(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_file(path)


def test_duplicate_header_keys(tmp_path):
    path = tmp_path / "dup.safetensors"
    raw = b'{"w": ' + json.dumps(W).encode() + b', "w": ' + json.dumps(W).encode() + b"}"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    with pytest.raises(ValueError, match="duplicate"):
        load_file(path)


def test_every_truncation_is_a_clear_error(good_file, tmp_path):
    """Fuzz: a file cut at any byte gives a ValueError naming it, never another exception or a partial load."""
    data = good_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(0, len(data), 7):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="cut.safetensors"):
            load_file(cut)


def test_flipped_header_bytes_load_or_fail_clearly(good_file, tmp_path):
    """Fuzz: flipping one header byte either still gives a valid file or a ValueError naming it."""
    data = bytearray(good_file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    bad = tmp_path / "flip.safetensors"
    g = torch.Generator().manual_seed(0)
    for pos in torch.randint(0, 8 + n, (150,), generator=g).tolist():
        mutated = bytearray(data)
        mutated[pos] ^= 1 << int(torch.randint(0, 8, (1,), generator=g))
        bad.write_bytes(bytes(mutated))
        try:
            load_file(bad)
        except ValueError as e:
            assert "flip.safetensors" in str(e)
