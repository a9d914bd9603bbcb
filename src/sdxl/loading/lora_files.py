"""LoRA files on disk: finding one by name in a LoRA folder, and the short hash A1111 records for it."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

SUFFIX = ".safetensors"


def find_lora(name: str, lora_dir: str | os.PathLike | None) -> Path:
    """The file for `name`: an existing path as it is, else `<lora_dir>/**/<name>.safetensors` (A1111 looks names
    up by file stem in its Lora folder and its subfolders). FileNotFoundError lists what the folder holds."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if lora_dir is None:
        raise FileNotFoundError(f"LoRA {name!r} is not a file, and no LoRA folder was given (--lora-dir) to look in.")
    folder = Path(lora_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"the LoRA folder {folder} does not exist.")
    found = sorted(p for p in folder.rglob(f"*{SUFFIX}") if p.stem == name or p.name == name)
    if not found:
        available = sorted(p.stem for p in folder.rglob(f"*{SUFFIX}"))
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "") or "no .safetensors files"
        raise FileNotFoundError(f"no LoRA named {name!r} in {folder}; it has: {shown}.")
    return found[0]


def a1111_lora_hash(path: str | os.PathLike) -> str:
    """A1111's short LoRA hash: the first 12 hex digits of the SHA-256 of the file's tensor data (the bytes after the
    safetensors header; the "addnet" hash that its `Lora hashes` field and Civitai use)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]
