"""What every model shares: a frozen config and diffusers-style `device`/`dtype` properties."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConfiguredModel(nn.Module):
    """An `nn.Module` built from one frozen config dataclass.

    External code written against diffusers/transformers reads `model.config.<key>`, `model.device`
    and `model.dtype` (compel and the pipelines do); this gives our models the same surface.
    """

    config: Any

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (models here never span devices)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def num_parameters(self) -> int:
        """Number of parameters (shared ones counted once)."""
        return sum(p.numel() for p in self.parameters())
