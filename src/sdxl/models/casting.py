"""Layerwise casting: keep weights in a small storage dtype (e.g. float8) and cast each layer up to the compute
dtype only for its own forward, as diffusers' `ModelMixin.enable_layerwise_casting` (hooks/layerwise_casting.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

# diffusers' defaults: norms and the UNet's outermost projections keep their dtype
DEFAULT_SKIP_MODULES_PATTERN = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")
CAST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Linear, nn.Embedding)  # fmt: skip


def _cast_hooks(layer: nn.Module, storage: torch.dtype, compute: torch.dtype, non_blocking: bool) -> None:
    layer.to(dtype=storage, non_blocking=non_blocking)

    def up(module: nn.Module, args: tuple) -> None:
        module.to(dtype=compute, non_blocking=non_blocking)

    def down(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        module.to(dtype=storage, non_blocking=non_blocking)

    layer.register_forward_pre_hook(up)
    layer.register_forward_hook(down)


def apply_layerwise_casting(
    model: nn.Module,
    storage_dtype: torch.dtype,
    compute_dtype: torch.dtype,
    skip_modules_pattern: Sequence[str] | None = DEFAULT_SKIP_MODULES_PATTERN,
    skip_modules_classes: tuple[type[nn.Module], ...] | None = None,
    non_blocking: bool = False,
) -> int:
    """Store every Linear/Conv/Embedding of `model` in `storage_dtype` and run it in `compute_dtype`, except layers
    whose dotted name matches a `skip_modules_pattern` regex or whose class is in `skip_modules_classes` (and
    everything inside them). Returns the number of layers cast."""
    for name, dtype in (("storage_dtype", storage_dtype), ("compute_dtype", compute_dtype)):
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{name} must be a torch.dtype such as torch.float8_e4m3fn, got {dtype!r}")
    patterns = tuple(skip_modules_pattern or ())
    count = 0

    def visit(module: nn.Module, prefix: str) -> None:
        nonlocal count
        if (skip_modules_classes and isinstance(module, skip_modules_classes)) or any(
            re.search(p, prefix) for p in patterns
        ):
            return
        if isinstance(module, CAST_LAYERS):
            _cast_hooks(module, storage_dtype, compute_dtype, non_blocking)
            count += 1
            return
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return count
