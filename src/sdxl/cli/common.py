"""What the subcommands share: the usage error, device and dtype flags."""

from __future__ import annotations

DTYPES = ("auto", "float32", "float16", "bfloat16")


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (reported like argparse's own errors)."""


def resolve_device(name: str):
    """`--device`: auto picks CUDA, then MPS, then the CPU; an unknown or unavailable device is a UsageError."""
    from sdxl.devices import pick_device

    try:
        return pick_device(name)
    except ValueError as err:
        raise UsageError(f"--device {err}") from None


def resolve_dtype(name: str, device):
    """`--dtype`: auto is float16 on an accelerator and float32 on the CPU."""
    from sdxl.devices import pick_dtype

    return pick_dtype(name, device)
