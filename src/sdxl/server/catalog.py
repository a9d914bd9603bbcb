"""The checkpoints a server may load, by name.

Clients name models, never paths: the names are the shipped demo aliases, the model the server was started with, and
what `--models-dir` holds (diffusers folders with a model_index.json, and single `.safetensors` files). A name is
looked up in that list, so `../x`, absolute paths, URLs and entries whose real path (after following symlinks)
lies outside the models folder can never be loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(LookupError):
    """No model of that name (a 404)."""


class UnsafeModelName(ValueError):
    """A path, URL or other name that is not a plain model or LoRA name (a 400)."""


@dataclass(frozen=True)
class ModelEntry:
    """A loadable checkpoint: its public name, what the runner loads, and whether it is a refiner."""

    name: str
    source: str  # a path, or a built-in alias ("demo")
    kind: str  # "builtin", "folder" or "file"
    refiner: bool = False

    @property
    def title(self) -> str:
        """A1111's title for it (A1111 appends a short hash; we do not hash multi-GB files on every start)."""
        return self.name


class ModelCatalog:
    """Lists and resolves model names. `start_model` (the `--model` value, trusted: the operator typed it) is listed
    under its own name."""

    def __init__(self, start_model: str, models_dir: str | Path | None = None):
        self.start_model = start_model
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None

    def entries(self) -> list[ModelEntry]:
        """Every loadable model, the start model first (read afresh: files added to --models-dir appear)."""
        from sdxl.loading.hub import DEMO_MODELS

        found: dict[str, ModelEntry] = {}
        start = _start_entry(self.start_model)
        found[start.name] = start
        for alias in DEMO_MODELS:
            found.setdefault(alias, ModelEntry(alias, alias, "builtin", refiner=alias.endswith("refiner")))
        for entry in self._scan():
            found.setdefault(entry.name, entry)
        return list(found.values())

    def _scan(self) -> list[ModelEntry]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        out = []
        for path in sorted(self.models_dir.iterdir()):
            real = path.resolve()
            if not _inside(real, self.models_dir):
                continue  # a symlink out of the folder: never listed, never loaded
            if real.is_dir() and (real / "model_index.json").is_file():
                out.append(ModelEntry(path.name, str(real), "folder", refiner=_is_refiner_folder(real)))
            elif real.is_file() and path.suffix == ".safetensors":
                out.append(ModelEntry(path.name, str(real), "file", refiner="refiner" in path.name.lower()))
        return out

    def resolve(self, name: str) -> ModelEntry:
        """The entry called `name` (also accepted: A1111's "name [hash]" title, or a file name without its
        .safetensors suffix). UnsafeModelName for paths and URLs, ModelNotFound for unknown names."""
        check_plain_name(name)
        name = name.split(" [", 1)[0].strip()
        entries = {e.name: e for e in self.entries()}
        entry = entries.get(name) or entries.get(f"{name}.safetensors")
        if entry is None:
            known = ", ".join(sorted(entries)) or "none"
            raise ModelNotFound(f"no model named {name!r}; the server can load: {known}")
        return entry


def check_plain_name(name: str) -> None:
    """A model name is one path segment: no separators, no `..`, no scheme, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafeModelName("a model name must be a non-empty string (see GET /v1/capabilities for the names)")
    if any(c in name for c in "/\\\x00") or ".." in name or "://" in name or name.startswith(("~", ".")) or (
        len(name) > 1 and name[1] == ":"
    ) or any(ord(c) < 32 for c in name):
        raise UnsafeModelName(
            f"{name!r} is not a model name: paths, URLs and `..` are refused; use one of the names "
            "GET /v1/capabilities (or /sdapi/v1/sd-models) lists"
        )


def _inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([str(path), str(folder)]) == str(folder) and path != folder


def _start_entry(model: str) -> ModelEntry:
    from sdxl.loading.hub import DEMO_MODELS

    if model in DEMO_MODELS:
        return ModelEntry(model, model, "builtin", refiner=model.endswith("refiner"))
    path = Path(model)
    if path.exists():
        kind = "file" if path.is_file() else "folder"
        refiner = _is_refiner_folder(path) if kind == "folder" else "refiner" in path.name.lower()
        return ModelEntry(path.name, str(path.resolve()), kind, refiner=refiner)
    return ModelEntry(model, model, "hub")  # a hub id from the local cache: the name is the id


def _is_refiner_folder(folder: Path) -> bool:
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(index.get("requires_aesthetics_score")) or index.get("text_encoder") in (None, [None, None])


class LoraCatalog:
    """LoRA files a server may apply, by name: the `.safetensors` files under `--lora-dir` (subfolders too) whose
    real path is inside it, named by file stem as A1111 names them. Prompt tags `<lora:NAME:W>` resolve here only."""

    def __init__(self, lora_dir: str | Path | None):
        self.lora_dir = Path(lora_dir).resolve() if lora_dir is not None else None

    def entries(self) -> dict[str, Path]:
        """name -> real path, read afresh (files added to the folder appear)."""
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return {}
        found: dict[str, Path] = {}
        for path in sorted(self.lora_dir.rglob("*.safetensors")):
            real = path.resolve()
            if real.is_file() and _inside(real, self.lora_dir):
                found.setdefault(path.stem, real)
        return found

    def resolve(self, name: str) -> Path:
        """The file of LoRA `name` (UnsafeModelName for paths and URLs, ModelNotFound for unknown names)."""
        check_plain_name(name)
        entries = self.entries()
        path = entries.get(name.removesuffix(".safetensors"))
        if path is None:
            if self.lora_dir is None:
                raise ModelNotFound(f"no LoRA named {name!r}: this server has no LoRA folder (sdxl serve --lora-dir)")
            known = ", ".join(sorted(entries)) or "none"
            raise ModelNotFound(f"no LoRA named {name!r}; the server has: {known}")
        return path
