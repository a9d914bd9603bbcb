"""Which accelerator this machine has, for offloading and `device_map="auto"`; devices and dtypes by name as the
command and the server take them ("auto" included). A leaf module: torch only."""

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


def pick_device(name: str = "auto") -> torch.device:
    """A device by name; "auto" picks CUDA, then MPS, then the CPU. ValueError for a name torch does not know or a
    GPU that is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{name!r} is not a device name ({err}); try cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} was asked for, but no CUDA GPU is available here; use cpu")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype by name ("float32", "float16", "bfloat16"); "auto" is float16 on an accelerator, float32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, not {name!r}")
    return getattr(torch, name)
