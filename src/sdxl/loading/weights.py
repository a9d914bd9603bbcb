"""Read `.safetensors` files (single or sharded) into state dicts, validating them first; refuse pickles.

Layout of a safetensors file (https://github.com/huggingface/safetensors#format):
  8 bytes little-endian u64 N | N bytes JSON header | data buffer
and the header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
the data buffer) plus an optional "__metadata__" str->str map. The buffer must be covered exactly, without holes.

Everything here reads only the first 8 + N bytes of a file before handing it to `safetensors.safe_open`, which
memory-maps the file: tensors are views into the mapping and are paged in when first used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# safetensors dtype tag -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}

# The same bound the safetensors library enforces, so a bogus length is caught before we read it.
MAX_HEADER_BYTES = 100_000_000

PICKLE_REFUSAL = (
    "sdxl loads only .safetensors weights by default, because unpickling a file can run arbitrary code. "
    "Use the safetensors files of this model (on the Hub: the *.safetensors files, e.g. with variant='fp16'), "
    "or convert the checkpoint to safetensors with a tool you trust."
)


class PickleRefusedError(ValueError):
    """A weights file is a PyTorch pickle (zip or raw pickle) and loading pickles is not allowed."""


def sniff_format(path: str | os.PathLike) -> str:
    """What a weights file holds, judged by its first bytes (never by its name).

    Returns "safetensors", "pickle" (raw pickle, as legacy `torch.save`), "zip" (`torch.save`'s zip container,
    most `.bin`/`.ckpt`/`.pt` files), "git-lfs" (a Git LFS pointer instead of the data), or "unknown".
    """
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{":
            return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode + protocol 2..5
        return "pickle"
    if head.startswith(b"version https://git-lfs"):
        return "git-lfs"
    return "unknown"


def _corrupt(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid safetensors file: {what}. The file is probably truncated or damaged "
        "(an interrupted download?); download or save it again."
    )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise json.JSONDecodeError(f"duplicate keys {dup[:3]}", "", 0)
    return dict(pairs)


def check_not_pickle(path: Path, kind: str | None = None) -> None:
    """Raise `PickleRefusedError` (or a clear error for a Git LFS pointer) unless `path` looks like safetensors."""
    kind = kind or sniff_format(path)
    if kind in ("zip", "pickle"):
        raise PickleRefusedError(
            f"{path} is a PyTorch pickle checkpoint ({kind} data), not safetensors. {PICKLE_REFUSAL}"
        )
    if kind == "git-lfs":
        raise ValueError(
            f"{path} is a Git LFS pointer, not the weights: the repository was cloned without git-lfs. "
            "Run `git lfs install && git lfs pull` in it, or download it with `hf download`."
        )


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse and validate the header of a safetensors file; reads only the header bytes.

    Returns (tensors, metadata): tensors maps name -> {"dtype", "shape", "data_offsets"} in file order.
    Raises `PickleRefusedError` for a pickle, `ValueError` naming the file (and tensor) for anything malformed.
    """
    path = Path(path)
    size = path.stat().st_size
    kind = sniff_format(path)
    check_not_pickle(path, kind)
    if size < 8:
        raise _corrupt(path, f"it has {size} bytes, fewer than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise _corrupt(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n > size - 8:
            raise _corrupt(path, f"header length {n} exceeds the file size ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _corrupt(path, f"the {n}-byte JSON header does not parse ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the JSON header is not an object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ is not a map of strings")

    buffer_size = size - 8 - n
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise _corrupt(path, f"tensor {name!r} has no dtype/shape/data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {dtype!r}, which sdxl does not load; "
                f"supported: {', '.join(DTYPES)}."
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            raise _corrupt(
                path,
                f"tensor {name!r} ({dtype}, shape {shape}) needs {nbytes} bytes but data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]}",
            )
        if offsets[1] > buffer_size:
            raise _corrupt(
                path,
                f"tensor {name!r} ends at byte {offsets[1]} of the data but the file holds only {buffer_size} "
                f"data bytes ({size} bytes in all)",
            )
        spans.append((offsets[0], offsets[1], name))

    # The data buffer must be covered exactly: sorted spans, each starting where the previous one ended.
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _corrupt(path, f"tensor {name!r} starts at data byte {begin}, expected {end} (overlap or hole)")
        end = stop
    if end != buffer_size:
        raise _corrupt(path, f"the tensors cover {end} data bytes but the file has {buffer_size}")
    return header, metadata


def load_file(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Load one safetensors file (validated first) into a state dict of memory-mapped tensors.

    `dtype` casts floating-point tensors (integer/bool tensors are kept); `device` moves them. Tensors that
    need neither stay views of the mapped file, so nothing is copied until a cast or move asks for it.
    """
    from safetensors import safe_open

    path = Path(path)
    header, _ = read_header(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in header:
                out[name] = _convert(f.get_tensor(name), dtype, device)
    except Exception as e:  # the library's own checks, should ours have missed something
        if isinstance(e, (ValueError, TypeError)) and str(path) in str(e):
            raise
        raise ValueError(f"{path}: reading the tensors failed: {e}") from e
    return out


def _convert(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def read_index(index_path: str | os.PathLike) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a `*.safetensors.index*.json`, validated."""
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_path} is not valid JSON ({e}); download or save the checkpoint again.") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path} has no 'weight_map' object mapping tensor names to shard files.")
    return weight_map


def load_sharded(
    index_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Load every shard named by a sharded checkpoint's index into one state dict.

    Each shard must exist beside the index and hold the tensors the index assigns to it.
    """
    index_path = Path(index_path)
    weight_map = read_index(index_path)
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(name)
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{index_path} lists {len(shards)} shard(s) but {len(missing)} are missing in {index_path.parent}: "
            f"{', '.join(missing[:5])}. Download the missing shard files."
        )
    out: dict[str, torch.Tensor] = {}
    for shard, names in shards.items():
        sd = load_file(index_path.parent / shard, dtype=dtype, device=device)
        absent = [n for n in names if n not in sd]
        if absent:
            raise ValueError(
                f"{index_path.parent / shard} lacks {len(absent)} tensor(s) that {index_path.name} assigns to it, "
                f"e.g. {absent[:3]}; the shard and the index do not belong together."
            )
        out.update(sd)
    return out


def load_weights(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or a sharded checkpoint when `path` is its `*.index*.json`."""
    path = Path(path)
    if path.name.endswith(".json"):
        return load_sharded(path, dtype=dtype, device=device)
    return load_file(path, dtype=dtype, device=device)


# ---- single checkpoint files of any format, chosen by content ------------------------------------------------------

# torch.load(weights_only=True) had code-execution holes before these releases (CVE-2025-32434, CVE-2026-24747).
MIN_TORCH_FOR_PICKLE = (2, 10)
ALLOW_PICKLE_HINT = (
    "If you trust the file, opt in with allow_pickle=True (CLI: --allow-pickle): sdxl then reads it with "
    "torch.load(weights_only=True), which refuses anything but tensors and plain containers."
)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Load one checkpoint file, its format judged by content (never by its name).

    safetensors: validated, memory-mapped. A PyTorch pickle (zip or raw) is refused before any unpickling unless
    `allow_pickle=True`; then only `torch.load(weights_only=True)` on torch >= 2.10 reads it (no fallback).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    kind = sniff_format(path)
    if kind == "safetensors" or kind in ("unknown", "git-lfs"):
        return load_file(path, dtype=dtype)
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a PyTorch pickle checkpoint ({kind} data), not safetensors; it was not unpickled, because "
            f"unpickling can run arbitrary code. {ALLOW_PICKLE_HINT}"
        )
    if _torch_version() < MIN_TORCH_FOR_PICKLE:
        raise PickleRefusedError(
            f"{path} is a pickle and torch {torch.__version__} is installed: torch.load(weights_only=True) is only "
            "trusted from torch 2.10 on (CVE-2025-32434, CVE-2026-24747). Upgrade torch or convert the file to "
            "safetensors elsewhere."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as e:  # noqa: BLE001  (weights_only's refusal or damage: never retried unsafely)
        # torch's message advises weights_only=False; keep only the reason
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0] if lines else "")
        raise PickleRefusedError(
            f"{path}: torch.load(weights_only=True) refused or failed to read it ({type(e).__name__}: {reason}). sdxl "
            "never falls back to weights_only=False; convert the file to safetensors with a tool you trust."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensor names to tensors).")
    return {k: _convert(v, dtype, None) for k, v in data.items()}


def check_finite(sd: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """ValueError naming every floating tensor of `sd` with NaN or Inf values (up to 10 named)."""
    bad = [
        name
        for name, t in sd.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" ... ({len(bad)} in all)" if len(bad) > 10 else ""
        raise ValueError(
            f"{source} has NaN or Inf values in {', '.join(bad[:10])}{more}: the weights are damaged (or were "
            "saved after a diverged fp16 step); use another copy of the checkpoint."
        )
