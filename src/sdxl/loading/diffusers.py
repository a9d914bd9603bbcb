"""Load models and pipeline components from the diffusers folder layout (local folder or hub id).

A pipeline folder holds `model_index.json` and one subfolder per component: models (`config.json` + weights),
tokenizers (`tokenizer.json` or `vocab.json` + `merges.txt`) and schedulers (`scheduler_config.json`); which file
holds a model's weights (variants, shards) is `files.py`'s job.

Models are built on the meta device and take the (memory-mapped) tensors by `load_state_dict(assign=True)`, so
no random init is paid and nothing is copied unless a dtype cast or a device move needs it.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from sdxl.devices import detect_accelerator
from sdxl.loading import keymaps, registry
from sdxl.loading.files import (  # noqa: F401  (the file-name helpers are re-exported from their former home)
    PICKLE_NAMES,
    WEIGHT_NAMES,
    add_variant,
    find_weights,
    folder_listing,
    has_variant,
    read_json,
    weight_file_names,
)
from sdxl.loading.hub import resolve_pretrained
from sdxl.loading.weights import load_weights

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

SHOWN_KEYS = 5


# ---- models -------------------------------------------------------------------------------------------------------


def device_from_map(device_map: Any, device: Any = None) -> Any:
    """The one device a diffusers `device_map` names: a device (or its name), {"": device}, or "auto"/"balanced"
    (the accelerator when there is one, else the CPU). sdxl places each model whole on one device."""
    if device_map is None:
        return device
    if device is not None:
        raise ValueError("Pass either `device` or `device_map`, not both.")
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(
                f"device_map={device_map!r} splits a model across devices, which sdxl does not do: pass one device, "
                "e.g. device_map=\"cuda\" or {\"\": \"cuda:0\"}."
            )
        device_map = device_map[""]
    if device_map in ("auto", "balanced"):
        return torch.device(detect_accelerator() or "cpu")
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device_map={device_map!r} is not a device: pass e.g. \"cuda\", \"cpu\", {{\"\": \"cuda:0\"}} or \"balanced\"."
        ) from e


def component_dtypes(torch_dtype: Any) -> Any:
    """name -> dtype for a pipeline's models: one dtype for all, or diffusers' {name: dtype, "default": dtype}
    (float32 where neither names the component)."""
    if isinstance(torch_dtype, dict):
        table = {k: _check_dtype(v) for k, v in torch_dtype.items()}
        return lambda name: table.get(name, table.get("default", torch.float32))
    dtype = _check_dtype(torch_dtype)
    return lambda name: dtype


def _check_dtype(torch_dtype: Any) -> torch.dtype:
    if torch_dtype is None:
        return torch.float32  # diffusers' default: every component in float32
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise TypeError(f"torch_dtype must be a floating torch.dtype such as torch.float16, got {torch_dtype!r}.")
    return torch_dtype


def _read_model_config(cls: type, folder: Path, subfolder: str | None) -> tuple[Any, Path]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = ""
        if subfolder is None and (folder / "model_index.json").is_file():
            comps = [p.name for p in sorted(folder.iterdir()) if (p / "config.json").is_file()]
            hint = f" It is a pipeline folder: pass subfolder=... (model subfolders: {', '.join(comps)})."
        raise FileNotFoundError(f"No config.json in {folder}: it is not a model folder in diffusers layout.{hint}")
    raw = read_json(config_path, "model config")
    declared = raw.get("_class_name") or (raw.get("architectures") or [None])[0]
    ours = registry.registered_name(cls)
    if ours is not None and declared in registry.MODELS and declared != ours:
        raise ValueError(
            f"{config_path} describes a {declared}, not a {ours}: load it with sdxl.{declared}.from_pretrained, "
            "or pick the right subfolder."
        )
    config_cls = registry.config_class(cls)
    try:
        return config_cls.from_dict(raw), config_path
    except (ValueError, TypeError) as e:
        raise type(e)(f"{config_path}: {e}") from e


def _shape_mismatch_text(key: str, got: torch.Size, want: torch.Size) -> str:
    return f"{key}: file {list(got)} vs model {list(want)}"


def check_keys(model: nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    """One ValueError naming `source`, the first few offending keys and the counts, unless the keys and shapes
    of `sd` equal the model's state dict exactly."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        _shape_mismatch_text(k, sd[k].shape, expected[k]) for k in expected if k in sd and sd[k].shape != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("with a shape mismatch", mismatched)):
        if items:
            more = ", ..." if len(items) > SHOWN_KEYS else ""
            parts.append(f"{len(items)} key(s) {label} ({', '.join(items[:SHOWN_KEYS])}{more})")
    raise ValueError(
        f"{source} does not match {type(model).__name__} as its config.json describes it: {'; '.join(parts)}. "
        "The weights and config.json probably belong to different models (or a different subfolder)."
    )


def load_model(
    cls: type[M],
    path_or_id: str | os.PathLike,
    subfolder: str | None = None,
    *,
    torch_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    device: torch.device | str | None = None,
    device_map: Any = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    low_cpu_mem_usage: bool | None = None,
) -> M:
    """Build `cls` from `config.json` on the meta device and assign the safetensors weights (diffusers layout).

    `torch_dtype` (or its newer diffusers spelling `dtype`; default float32, as diffusers) is the dtype of every
    floating tensor; `variant` picks e.g. the `.fp16.` files (an absent variant is an error listing what exists);
    `device` (or diffusers' `device_map`: one device, {"": device} or "auto"/"balanced", see `device_from_map`) is
    where the tensors go; `low_cpu_mem_usage` is accepted and ignored (models always build on the meta device and
    take the checkpoint's tensors). Only safetensors are read: a pickle checkpoint is refused whatever
    `use_safetensors` says. The model comes back in eval mode with `requires_grad=False`.
    """
    if torch_dtype is not None and dtype is not None:
        raise ValueError("Pass the dtype once: as `torch_dtype` or as `dtype`, not both.")
    dtype = _check_dtype(torch_dtype if torch_dtype is not None else dtype)
    device = device_from_map(device_map, device)
    root = resolve_pretrained(
        path_or_id,
        subfolders=[subfolder] if subfolder else None,
        variant=variant,
        variant_fallback=False,
        cache_dir=cache_dir,
        revision=revision,
        local_files_only=local_files_only,
    )
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} has no subfolder {subfolder!r}; it has: {folder_listing(root)}.")
    if use_safetensors is False:
        logger.info("use_safetensors=False: sdxl reads safetensors only; pickle checkpoints are refused.")

    config, _ = _read_model_config(cls, folder, subfolder)
    with torch.device("meta"):
        model = cls(config)

    weights = find_weights(folder, variant, use_safetensors)
    sd = keymaps.normalize_keys(registry.keymap_family(cls), load_weights(weights, dtype=dtype, device=device))
    check_keys(model, sd, weights)
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise TypeError(
            f"{cls.__name__} has tensors outside its state dict that no checkpoint can fill: {left[:SHOWN_KEYS]} "
            "(model contract: no non-persistent buffers; compute them in forward)."
        )
    model.eval()
    model.requires_grad_(False)
    logger.info("Loaded %s from %s (%s)", cls.__name__, weights, dtype)
    return model


# ---- pipelines ----------------------------------------------------------------------------------------------------


def _component_entries(index: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """name -> (library, class name) for every component entry of model_index.json (config values skipped)."""
    return {
        k: (v[0], v[1])
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2
    }


def _load_tokenizer(cls: type, folder: Path, name: str) -> Any:
    sub = folder / name
    has_files = (sub / "tokenizer.json").is_file() or (sub / "vocab.json").is_file() or (sub / "merges.txt").is_file()
    if has_files or not hasattr(cls, "from_shipped_vocab"):
        return cls.from_pretrained(folder, subfolder=name)
    pad = None
    for cfg_name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (sub / cfg_name).is_file():
            pad = pad or read_json(sub / cfg_name, "tokenizer config").get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if pad is None:
        # SDXL's convention: the second tokenizer (OpenCLIP-G) pads with "!", the first with <|endoftext|>.
        pad = "!" if name == "tokenizer_2" else "<|endoftext|>"
    logger.warning(
        "%s has no tokenizer files (tokenizer.json or vocab.json + merges.txt); using the CLIP vocabulary shipped "
        "with sdxl, padding with %r.",
        sub,
        pad,
    )
    return cls.from_shipped_vocab(pad_token=pad)


def load_pipeline_components(
    path_or_id: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    device_map: Any = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load every component `model_index.json` lists; returns (components, model_index dict).

    `overrides` maps component names to user objects (or None to drop one): those are not loaded (nor
    downloaded) and come back as given, also names model_index.json does not list. Null entries give None.
    With `variant`, each model component uses the variant files when its folder has them and the plain files
    otherwise (diffusers 0.42 does the same); no model component having the variant is an error.
    `torch_dtype` is one dtype for every model or, as in diffusers, a dict {component name: dtype, "default": dtype}.
    `device_map` as in `load_model` (the whole pipeline on one device).
    """
    overrides = dict(overrides or {})
    dtype_of = component_dtypes(torch_dtype)
    device = device_from_map(device_map, device)
    hub = {"cache_dir": cache_dir, "revision": revision, "local_files_only": local_files_only}
    root = resolve_pretrained(path_or_id, subfolders=[], **hub)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        hint = ""
        if (root / "config.json").is_file():
            hint = " It holds a single model (config.json): load it with the model class's from_pretrained."
        raise FileNotFoundError(f"No model_index.json in {root}: it is not a diffusers pipeline folder.{hint}")
    index = read_json(index_path, "pipeline index")
    entries = _component_entries(index)

    todo: dict[str, tuple[str, type]] = {}
    for name, (library, class_name) in entries.items():
        if name in overrides or class_name is None or library is None:
            continue
        todo[name] = registry.resolve_component(name, library, class_name)
    if todo:
        root = resolve_pretrained(path_or_id, subfolders=sorted(todo), variant=variant, variant_fallback=True, **hub)

    models = [name for name, (kind, _) in todo.items() if kind == registry.MODEL]
    variants = {name: variant if variant and has_variant(root / name, variant) else None for name in models}
    if variant is not None and models and not any(variants.values()):
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available: no component of {root} has {variant} files (looked in {', '.join(models)}). Pass "
            "variant=None to load the files without a variant."
        )
    for name in models:
        if variant is not None and variants[name] is None:
            logger.info("%s has no %s files; loading its files without a variant", root / name, variant)

    components: dict[str, Any] = {name: None for name in entries}
    for name, (kind, cls) in todo.items():
        if kind == registry.MODEL:
            components[name] = load_model(
                cls,
                root,
                name,
                torch_dtype=dtype_of(name),
                variant=variants[name],
                use_safetensors=use_safetensors,
                device=device,
            )
        elif kind == registry.TOKENIZER:
            components[name] = _load_tokenizer(cls, root, name)
        elif kind == registry.PROCESSOR:
            components[name] = cls.from_pretrained(root, subfolder=name)
        else:
            config = read_json(root / name / "scheduler_config.json", f"scheduler config of {name!r}")
            try:
                components[name] = cls.from_config(config)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{root / name / 'scheduler_config.json'}: {e}") from e
    components.update(overrides)
    return components, index
