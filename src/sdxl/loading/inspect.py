"""What a checkpoint holds (for `sdxl info`): kind, layout, dtypes, parameter counts per component, and a NaN/Inf
check. Reads safetensors headers for the counts; the value check maps the tensors (memory-mapped, one at a time)."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sdxl.loading.files import find_weights, read_json
from sdxl.loading.single_file import BASE, REFINER, detect_kind, parts_for
from sdxl.loading.weights import check_finite, load_checkpoint, read_header, read_index, sniff_format

MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _headers(path: Path) -> dict[str, dict]:
    if path.name.endswith(".json"):
        out: dict[str, dict] = {}
        for shard in sorted(set(read_index(path).values())):
            out.update(read_header(path.parent / shard)[0])
        return out
    return read_header(path)[0]


def describe(path: str | os.PathLike, *, check_values: bool = True, allow_pickle: bool = False) -> dict[str, Any]:
    """A summary dict: layout, kind, dtypes, {component: parameter count}, has_text_encoders, has_vae.

    `check_values` loads the tensors (memory-mapped) and raises a ValueError naming any NaN/Inf tensor.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a .safetensors file or a diffusers folder.")
    if path.is_dir():
        return _describe_folder(path, check_values)
    if allow_pickle or sniff_format(path) in ("zip", "pickle"):  # refused with the opt-in hint unless allowed
        sd = load_checkpoint(path, allow_pickle=allow_pickle)
        headers = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in sd.items()}
    else:
        headers = _headers(path)
    kind = detect_kind({k: tuple(v["shape"]) for k, v in headers.items()}, path)
    counts: dict[str, int] = {}
    for part in parts_for(kind):
        n = sum(math.prod(v["shape"]) for k, v in headers.items() if k.startswith(part.prefix))
        if n:
            counts[part.name] = n
    if check_values:
        check_finite(load_checkpoint(path, allow_pickle=allow_pickle), path)
    return _summary("single file", kind, Counter(v["dtype"] for v in headers.values()), counts)


def _describe_folder(folder: Path, check_values: bool) -> dict[str, Any]:
    index = read_json(folder / "model_index.json", "pipeline index")
    counts: dict[str, int] = {}
    dtypes: Counter = Counter()
    in_channels = None
    for name in MODEL_COMPONENTS:
        entry = index.get(name)
        if not entry or entry[-1] is None or not (folder / name).is_dir():
            continue
        weights = find_weights(folder / name)
        headers = _headers(weights)
        counts[name] = sum(math.prod(v["shape"]) for v in headers.values())
        dtypes.update(v["dtype"] for v in headers.values())
        if check_values:
            check_finite(load_checkpoint(weights) if not weights.name.endswith(".json") else {}, weights)
        if name == "unet":
            in_channels = read_json(folder / name / "config.json", "unet config").get("in_channels", 4)
    entry = index.get("text_encoder")
    kind = REFINER if (not entry or entry[-1] is None) and "text_encoder_2" in counts else BASE
    if in_channels == 9:
        kind = "inpaint"
    return _summary("diffusers folder", kind, dtypes, counts)


def _summary(layout: str, kind: str, dtypes: Counter, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "layout": layout,
        "kind": kind,
        "dtypes": dict(dtypes.most_common()),
        "parameters": counts,
        "total_parameters": sum(counts.values()),
        "has_text_encoders": any(n in counts for n in ("text_encoder", "text_encoder_2")),
        "has_vae": "vae" in counts,
    }

