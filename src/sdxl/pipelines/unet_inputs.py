"""The UNet inputs every SDXL mode passes besides the text and time ids: IP-Adapter image embeddings, the guidance
embedding of guidance-distilled (LCM) UNets, and the call's `cross_attention_kwargs` (read by the denoising loop)."""

from __future__ import annotations

from typing import Any

import torch

from sdxl.pipelines.denoise import guidance_scale_embedding


class UNetInputsMixin:
    """Mixed into the SDXL pipelines (needs `unet`, `guidance_scale`, `do_classifier_free_guidance` and
    `prepare_ip_adapter_image_embeds`)."""

    _cross_attention_kwargs: dict[str, Any] | None = None

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        """The call's `cross_attention_kwargs`, passed to the UNet at every step."""
        return self._cross_attention_kwargs

    def _guidance_embedding_dim(self) -> int | None:
        return getattr(getattr(self.unet, "config", None), "time_cond_proj_dim", None)

    def _denoiser_extras(
        self, ip_adapter_image: Any, ip_adapter_image_embeds: Any, batch_size: int, device: Any, dtype: torch.dtype
    ) -> dict[str, Any]:
        """The UNet inputs besides text and time ids that every mode shares: IP-Adapter image embeddings
        ("image_embeds", one tensor per adapter) and, for UNets that embed the guidance scale (LCM-distilled),
        "timestep_cond" (B, time_cond_proj_dim)."""
        extras: dict[str, Any] = {}
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            extras["image_embeds"] = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch_size, self.do_classifier_free_guidance
            )
        dim = self._guidance_embedding_dim()
        if dim is not None:
            scale = torch.as_tensor(self.guidance_scale, dtype=torch.float32) - 1  # one number, or one per image
            scale = scale.repeat(batch_size) if scale.ndim == 0 else scale
            extras["timestep_cond"] = self.get_guidance_scale_embedding(scale, embedding_dim=dim).to(device, dtype)
        return extras

    @staticmethod
    def get_guidance_scale_embedding(
        w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """diffusers' name for `guidance_scale_embedding` (LCM's sinusoidal embedding of w = guidance_scale - 1)."""
        return guidance_scale_embedding(w, embedding_dim, dtype)
