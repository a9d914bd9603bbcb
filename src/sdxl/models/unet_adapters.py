"""What the UNet carries besides its forward: FreeU and the IP-Adapter layers (diffusers' method names, so code
written against diffusers' UNet runs on ours)."""

from __future__ import annotations

from typing import Any

import torch


class UNetAdaptersMixin:
    """Mixed into `UNet2DConditionModel` (needs `up_blocks`, `encoder_hid_proj` and `AttentionProcessorsMixin`)."""

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al. 2023, arXiv:2309.11497): in the first two up blocks scale the backbone features by b1/b2
        and the skip features' low frequencies by s1/s2. SDXL values from the paper: s1=0.9, s2=0.2, b1=1.3, b2=1.4.
        """
        for block in self.up_blocks:  # type: ignore[attr-defined]
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        """Turn FreeU off again."""
        for block in self.up_blocks:  # type: ignore[attr-defined]
            block.s1 = block.s2 = block.b1 = block.b2 = None

    def _load_ip_adapter_weights(self, state_dicts: Any, low_cpu_mem_usage: bool = True) -> None:
        """Install IP-Adapter(s) from their original state dicts ({"image_proj": ..., "ip_adapter": ...}, or a list
        of them): one image projection per adapter (`encoder_hid_proj`) and decoupled cross-attention processors
        on every cross-attention layer. Replaces adapters loaded before, as diffusers does."""
        # The second documented upward import of models/ (see tests/test_layering.py): the original IP-Adapter
        # layouts are key renames, which live in loading/.
        from sdxl.loading.ip_adapter import image_projection_from_state_dict, ip_attention_processors

        if not isinstance(state_dicts, list):
            state_dicts = [state_dicts]
        for sd in state_dicts:
            if not isinstance(sd, dict) or "image_proj" not in sd or "ip_adapter" not in sd:
                raise ValueError(
                    "An IP-Adapter state dict must hold 'image_proj' and 'ip_adapter' entries (the original "
                    "IP-Adapter layout, e.g. ip-adapter_sdxl.safetensors read with its prefixes split)."
                )
        from .ip_adapter import MultiIPAdapterImageProjection

        # build everything first: a bad state dict leaves the UNet as it was
        layers = [image_projection_from_state_dict(sd["image_proj"]) for sd in state_dicts]
        param = next(self.parameters())  # type: ignore[attr-defined]
        previous, self.encoder_hid_proj = self.encoder_hid_proj, None  # its attention layers get no IP processors
        try:
            processors = ip_attention_processors(self, state_dicts, param.device, param.dtype)
        except ValueError:
            self.encoder_hid_proj = previous
            raise
        self.set_attn_processor(processors)  # type: ignore[attr-defined]
        self.encoder_hid_proj = MultiIPAdapterImageProjection(layers).to(device=param.device, dtype=param.dtype)

    def _load_ip_adapter_loras(self, state_dicts: Any) -> dict:
        """FaceID's LoRA weights, keyed as diffusers does; sdxl does not apply LoRA, so these must be absent."""
        state_dicts = state_dicts if isinstance(state_dicts, list) else [state_dicts]
        for sd in state_dicts:
            if any("lora" in key for key in sd.get("ip_adapter", {})):
                raise ValueError(
                    "This IP-Adapter (FaceID) carries LoRA weights, which sdxl does not apply yet: use the FaceID "
                    "variant without LoRA (e.g. ip-adapter-faceid_sdxl without the _lora file) or merge them first."
                )
        return {}

    def _unload_ip_adapter(self) -> None:
        """Remove the image projections and give every IP-Adapter layer back plain attention."""
        from .attention_processor import AttnProcessor2_0
        from .ip_adapter import IPAdapterAttnProcessor2_0

        self.encoder_hid_proj = None
        processors = {
            name: AttnProcessor2_0() if isinstance(p, IPAdapterAttnProcessor2_0) else p
            for name, p in self.attn_processors.items()  # type: ignore[attr-defined]
        }
        self.set_attn_processor(processors)  # type: ignore[attr-defined]

    def ip_adapter_layers(self) -> dict[str, torch.nn.Module]:
        """{"<layer>.processor": IPAdapterAttnProcessor2_0} for every layer that has IP-Adapter weights."""
        from .ip_adapter import IPAdapterAttnProcessor2_0

        processors = self.attn_processors  # type: ignore[attr-defined]
        return {n: p for n, p in processors.items() if isinstance(p, IPAdapterAttnProcessor2_0)}
