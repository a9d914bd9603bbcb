"""The pipelines' memory and speed switches, as diffusers names them: CPU offload, VAE tiling and slicing, and the
attention switches that SDPA makes unnecessary (accepted as no-ops)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sdxl.pipelines.offload import ModelOffload, SequentialOffload, accelerator_device

logger = logging.getLogger(__name__)


class MemoryOptionsMixin:
    """Mixed into `DiffusionPipeline`: needs `components`, `model_cpu_offload_seq` and (for the VAE switches) `vae`."""

    def _offload_models(self) -> dict[str, torch.nn.Module]:
        """{name: model} in `model_cpu_offload_seq` order, then the other models."""
        models = {n: c for n, c in self.components.items() if isinstance(c, torch.nn.Module)}
        order = [n for n in self.model_cpu_offload_seq.split("->") if n in models]
        return {n: models[n] for n in order + [n for n in models if n not in order]}

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep the models on the CPU and move each to the accelerator when it runs, the previous one back.

        At most one model (text_encoder, text_encoder_2, unet, vae, in the order they run) is on the accelerator at
        a time; `pipe.device` reports the accelerator. `device` None detects it (CUDA, XPU, MPS); with none, a
        RuntimeError, as diffusers. Our own hooks: accelerate is not needed.
        """
        self._enable_model_offload(accelerator_device(gpu_id, device, "enable_model_cpu_offload"))

    def _enable_model_offload(self, device: torch.device | str) -> None:
        # any device, the CPU included: the tests run the hook logic on CPU-only machines this way
        self.remove_all_hooks()
        self._offload = ModelOffload(self._offload_models(), torch.device(device))

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """Keep every weight on the CPU; each layer's weights visit the accelerator only for its forward.

        The least accelerator memory (one layer's weights at a time) and the slowest; arguments and the error with
        no accelerator as `enable_model_cpu_offload`.
        """
        self._enable_sequential_offload(accelerator_device(gpu_id, device, "enable_sequential_cpu_offload"))

    def _enable_sequential_offload(self, device: torch.device | str) -> None:
        self.remove_all_hooks()
        self._offload = SequentialOffload(self._offload_models(), torch.device(device))

    def maybe_free_model_hooks(self) -> None:
        """After a call with model CPU offload: move the model left on the accelerator back to the CPU."""
        offload = getattr(self, "_offload", None)
        if offload is not None:
            offload.offload()

    def remove_all_hooks(self) -> None:
        """Turn CPU offload off: remove its hooks (the models stay where they are, normally the CPU)."""
        offload = getattr(self, "_offload", None)
        if offload is not None:
            offload.remove()
        self._offload = None

    def _vae(self, what: str) -> Any:
        vae = getattr(self, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            raise ValueError(f"{what} needs the pipeline's `vae` (an AutoencoderKL), but it is {vae!r}.")
        return vae

    def enable_vae_tiling(self) -> None:
        """Decode/encode large images in overlapping tiles (`pipe.vae.enable_tiling()`): a 2048x2048 decode fits in
        far less memory; outputs differ slightly from untiled near tile seams."""
        self._vae("enable_vae_tiling").enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Decode/encode in one piece again."""
        self._vae("disable_vae_tiling").disable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode/encode a batch one image at a time (`pipe.vae.enable_slicing()`): same images, less memory."""
        self._vae("enable_vae_slicing").enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Decode/encode the whole batch at once again."""
        self._vae("disable_vae_slicing").disable_slicing()

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Accepted for diffusers compatibility; a no-op: attention already runs through PyTorch's
        scaled_dot_product_attention, which picks a memory-efficient (or flash) kernel itself."""
        logger.info("enable_xformers_memory_efficient_attention: sdxl already uses PyTorch SDPA attention; nothing to do.")

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Accepted for diffusers compatibility; a no-op (see `enable_xformers_memory_efficient_attention`)."""

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Accepted for diffusers compatibility; a no-op: SDPA's memory-efficient kernels already avoid the full
        attention matrix that slicing was meant to split."""
        if slice_size is not None and not isinstance(slice_size, (str, int)):
            raise TypeError(f"`slice_size` must be 'auto', 'max', an int or None, but got {slice_size!r}.")
        if isinstance(slice_size, str) and slice_size not in ("auto", "max"):
            raise ValueError(f"`slice_size` must be 'auto', 'max', an int or None, but got {slice_size!r}.")
        logger.info("enable_attention_slicing: sdxl uses PyTorch SDPA attention, which needs no slicing; nothing to do.")

    def disable_attention_slicing(self) -> None:
        """Accepted for diffusers compatibility; a no-op."""

