"""What the subcommands share: the usage error, device and dtype flags."""

from __future__ import annotations

DTYPES = ("auto", "float32", "float16", "bfloat16")


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (reported like argparse's own errors)."""


def resolve_device(name: str):
    """`--device`: auto picks CUDA, then MPS, then the CPU; an unavailable GPU is a UsageError."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a device name ({err}); try cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but no CUDA GPU is available here; use --device cpu")
    return device


def resolve_dtype(name: str, device):
    """`--dtype`: auto is float16 on an accelerator and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return getattr(torch, name)
