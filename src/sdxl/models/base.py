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
        """The dtype of the first floating-point parameter (the compute dtype under layerwise casting)."""
        compute = getattr(self, "_layerwise_compute_dtype", None)
        if compute is not None:
            return compute
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

    @classmethod
    def from_config(cls, config: Any = None, **kwargs: Any) -> Self:
        """A freshly initialised model from a config (our dataclass or a config.json dict) and/or keywords, as
        diffusers' `ModelMixin.from_config`."""
        return cls(config, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Write `config.json` and the weights in diffusers/transformers layout (as `ModelMixin.save_pretrained`).

        Weights are always written as safetensors: `safe_serialization=False` (diffusers' pickle format) is accepted
        for compatibility but changes nothing; sdxl never writes pickles. `variant` (e.g. "fp16") goes into the
        file name. Other diffusers keywords (`is_main_process`, `max_shard_size`, `push_to_hub`, ...) are refused.
        """
        from sdxl.loading.save import save_model

        if kwargs:
            raise TypeError(f"save_pretrained got unsupported arguments {sorted(kwargs)}; it takes variant=.")
        return save_model(self, save_directory, variant=variant, safe_serialization=safe_serialization)

    def enable_layerwise_casting(
        self,
        storage_dtype: torch.dtype = torch.float8_e4m3fn,
        compute_dtype: torch.dtype | None = None,
        skip_modules_pattern: tuple[str, ...] | None = None,
        skip_modules_classes: tuple[type[nn.Module], ...] | None = None,
        non_blocking: bool = False,
    ) -> None:
        """Store weights in `storage_dtype` (default float8_e4m3fn) and cast each layer to `compute_dtype` (default
        the current dtype) for its forward: less memory, some precision lost. As diffusers: norms and the outer
        proj_in/proj_out keep their dtype unless `skip_modules_pattern` says otherwise; `model.dtype` reports the
        compute dtype. It cannot be undone (reload the model instead)."""
        from .casting import DEFAULT_SKIP_MODULES_PATTERN, apply_layerwise_casting

        compute_dtype = self.dtype if compute_dtype is None else compute_dtype
        patterns = DEFAULT_SKIP_MODULES_PATTERN if skip_modules_pattern is None else skip_modules_pattern
        apply_layerwise_casting(self, storage_dtype, compute_dtype, patterns, skip_modules_classes, non_blocking)
        self._layerwise_compute_dtype = compute_dtype

    def num_parameters(self) -> int:
        """Number of parameters (shared ones counted once)."""
        return sum(p.numel() for p in self.parameters())
