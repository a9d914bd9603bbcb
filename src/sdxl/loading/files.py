"""A diffusers folder's files: the weights file names models use (variants, shards, the order diffusers looks for
them), finding a model folder's weights (pickles only to be refused by content), and reading its JSON files.

Weights file names follow diffusers 0.42 / transformers 5 (`_add_variant` inserts the variant before the last
dot-part):

  diffusion_pytorch_model.safetensors                  model.safetensors
  diffusion_pytorch_model.fp16.safetensors             model.fp16.safetensors
  diffusion_pytorch_model.safetensors.index.json       (sharded; shards `...-00001-of-00002.safetensors`)
  diffusion_pytorch_model.safetensors.index.fp16.json  (shards `diffusion_pytorch_model.fp16-00001-of-00002...`)
  diffusion_pytorch_model.safetensors.fp16.index.json  (legacy sharded variant index, still read by diffusers)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sdxl.loading.weights import read_index

logger = logging.getLogger(__name__)

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers models, transformers models
PICKLE_NAMES = ("diffusion_pytorch_model", "pytorch_model")


def add_variant(name: str, variant: str | None) -> str:
    """diffusers/transformers `_add_variant`: "a.safetensors" + "fp16" -> "a.fp16.safetensors"."""
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_file_names(variant: str | None) -> list[str]:
    """Safetensors weight file names a model folder may hold, in the order diffusers looks for them."""
    names = []
    for base in WEIGHT_NAMES:
        names.append(add_variant(f"{base}.safetensors.index.json", variant))
        if variant is not None:
            names.append(f"{base}.safetensors.{variant}.index.json")  # legacy variant index
        names.append(add_variant(f"{base}.safetensors", variant))
    return names


def _pickle_file_names(variant: str | None) -> list[str]:
    names = []
    for base in PICKLE_NAMES:
        names += [add_variant(f"{base}.bin.index.json", variant), add_variant(f"{base}.bin", variant)]
    return names


def has_variant(folder: Path, variant: str) -> bool:
    """Whether a component folder has files of `variant` (diffusers' `_identify_model_variants` rule)."""
    if not folder.is_dir():
        return False
    return any(len(p.split(".")) > 1 and p.split(".")[1].startswith(variant) for p in os.listdir(folder))


def folder_listing(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not files:
        return "nothing"
    more = f", ... ({len(files) - 12} more)" if len(files) > 12 else ""
    return ", ".join(files[:12]) + more


def find_weights(folder: Path, variant: str | None = None, use_safetensors: bool | None = None) -> Path:
    """The weights file (or shard index) of a model folder; pickles are returned only to be refused by content.

    A requested variant that is absent is an error, as in diffusers' `ModelMixin.from_pretrained` (the pipeline
    loader falls back per component instead, see `load_pipeline_components`).
    """
    for name in weight_file_names(variant):
        if (folder / name).is_file():
            return folder / name
    for name in _pickle_file_names(variant):
        if (folder / name).is_file():
            path = folder / name
            if name.endswith(".json"):  # a sharded pickle: its first shard gets refused by content
                first = sorted(set(read_index(path).values()))
                path = folder / first[0] if first and (folder / first[0]).is_file() else path
            logger.info("%s has no safetensors weights; checking %s", folder, path.name)
            return path
    expected = ", ".join(weight_file_names(variant))
    if variant is not None and any((folder / n).is_file() for n in weight_file_names(None)):
        raise FileNotFoundError(
            f"{folder} has no weights for variant={variant!r}: expected one of {expected}. It has: "
            f"{folder_listing(folder)}. Pass variant=None to load the weights without a variant."
        )
    hint = " (use_safetensors=False does not enable pickle loading)" if use_safetensors is False else ""
    raise FileNotFoundError(
        f"No weights in {folder}: expected one of {expected}{hint}. It has: {folder_listing(folder)}."
    )


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object.")  # noqa: TRY004 (bad file content, not a bad argument)
    return data
