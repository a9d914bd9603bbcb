"""Which accelerator this machine has (a leaf module: torch only), for offloading and `device_map="auto"`."""

from __future__ import annotations

import torch


def detect_accelerator() -> str | None:
    """'cuda', 'xpu' or 'mps', whichever is available first; None on a CPU-only machine."""
    for kind in ("cuda", "xpu", "mps"):
        if is_available(kind):
            return kind
    return None


def is_available(kind: str) -> bool:
    """Whether torch has a usable device of type `kind`."""
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    backend = getattr(torch, kind, None)
    return bool(backend is not None and hasattr(backend, "is_available") and backend.is_available())
