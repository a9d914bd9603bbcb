"""What every model shares: a frozen config and diffusers-style `device`/`dtype` properties."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # for the from_pretrained annotations only
    import os

    from typing_extensions import Self


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

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """Load from a folder in diffusers layout or a hub id, as diffusers' `ModelMixin.from_pretrained`.

        `subfolder` (e.g. "unet" of a pipeline folder), and keywords `torch_dtype` (default float32), `variant`
        (e.g. "fp16"), `use_safetensors`, `device`, `cache_dir`, `revision`, `local_files_only`; see
        `sdxl.loading.diffusers.load_model`. Only safetensors weights are read.
        """
        # The one allowed upward import (models -> loading), done lazily so models/ imports only torch.
        from sdxl.loading.diffusers import load_model

        return load_model(cls, pretrained_model_name_or_path, subfolder, **kwargs)

    def num_parameters(self) -> int:
        """Number of parameters (shared ones counted once)."""
        return sum(p.numel() for p in self.parameters())
