"""The SDXL UNet: one config-driven class for the base, the refiner and the 9-channel inpainting model.

Architecture and state-dict keys follow diffusers 0.42.1 `UNet2DConditionModel`
(https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/unets/unet_2d_condition.py)
restricted to what SDXL (and SD 1.x) checkpoints use; any other config value is refused at config time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import Transformer2DModel
from .attention_processor import AttentionProcessorsMixin, IPAdapterContext
from .base import ConfiguredModel
from .layers import (
    Downsample2D,
    ModelOutput,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    build_config,
    silu_,
    timestep_embedding,
)
from .lora import call_scale, check_cross_attention_kwargs
from .unet_adapters import UNetAdaptersMixin
from .unet_blocks import DownBlock, MidBlock, UpBlock
from .unet_config import UNetConfig

__all__ = ["UNet2DConditionModel", "UNet2DConditionOutput", "UNetConfig"]

_UNSUPPORTED_FORWARD_KWARGS = frozenset(
    {
        "class_labels",
        "attention_mask",
        "encoder_attention_mask",
        "down_block_additional_residuals",
        "mid_block_additional_residual",
        "down_intrablock_additional_residuals",
    }
)
_ADDED_COND_KEYS = frozenset({"text_embeds", "time_ids", "image_embeds"})


@dataclass
class UNet2DConditionOutput(ModelOutput):
    """What the UNet returns with `return_dict=True`: `.sample` (also `out[0]`), shaped like the input sample."""

    sample: torch.Tensor



class UNet2DConditionModel(UNetAdaptersMixin, AttentionProcessorsMixin, ConfiguredModel):
    """The SDXL denoising UNet (base, refiner or inpainting, from `UNetConfig`), diffusers' keys and call forms.

    Built from a `UNetConfig`, a config.json dict, or diffusers' keyword arguments
    (`UNet2DConditionModel(block_out_channels=(32, 64), ...)`); a fresh model gets diffusers' random weights for the
    same `torch.manual_seed` (modules are built in diffusers' order). Adapters and switches (IP-Adapter, FreeU,
    attention processors, fused projections) are in `unet_adapters.py` / `attention_processor.py`.
    """

    def __init__(self, config: UNetConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        config = build_config(UNetConfig, config, kwargs, "UNet2DConditionModel")
        self.config = config
        ch = config.block_out_channels
        n = len(ch)
        heads = config.per_level("attention_head_dim")  # number of heads per level (see UNetConfig)
        layers = config.per_level("layers_per_block")
        depth = config.per_level("transformer_layers_per_block")
        cross_dim = config.per_level("cross_attention_dim")
        temb_dim = config.time_embedding_dim or 4 * ch[0]
        groups, eps = config.norm_num_groups, config.norm_eps

        def resnet(c_in: int, c_out: int, scale: float = 1.0) -> ResnetBlock2D:
            return ResnetBlock2D(c_in, c_out, temb_dim, groups, eps, output_scale_factor=scale)

        def transformer(c: int, level_heads: int, num_layers: int, context_dim: int) -> Transformer2DModel:
            return Transformer2DModel(c, level_heads, num_layers, context_dim, groups, config.use_linear_projection)

        self.conv_in = nn.Conv2d(config.in_channels, ch[0], config.conv_in_kernel, padding=config.conv_in_kernel // 2)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim, cond_proj_dim=config.time_cond_proj_dim)
        self.encoder_hid_proj = None  # IP-Adapter image projections, set by _load_ip_adapter_weights
        self.add_embedding = None
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb_dim)

        # Registered down, up, then mid (diffusers' order: `attn_processors` and IP-Adapter weight ids follow it);
        # built down, mid, then up, each resnet before its transformer (diffusers' order: same random weights).
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        c_out = ch[0]
        for i, kind in enumerate(config.down_block_types):
            c_in, c_out = c_out, ch[i]
            resnets, attentions = [], []
            for j in range(layers[i]):
                resnets.append(resnet(c_in if j == 0 else c_out, c_out))
                if kind == "CrossAttnDownBlock2D":
                    attentions.append(transformer(c_out, heads[i], depth[i], cross_dim[i]))
            down = Downsample2D(c_out, padding=config.downsample_padding) if i < n - 1 else None
            self.down_blocks.append(DownBlock(resnets, attentions or None, down))

        scale = config.mid_block_scale_factor
        first = resnet(ch[-1], ch[-1], scale)
        mid_attention = transformer(ch[-1], heads[-1], depth[-1], cross_dim[-1])
        self.mid_block = MidBlock([first, resnet(ch[-1], ch[-1], scale)], [mid_attention])

        rev_ch, rev_heads, rev_layers = ch[::-1], heads[::-1], layers[::-1]
        rev_depth, rev_cross = depth[::-1], cross_dim[::-1]
        c_out = rev_ch[0]
        for i, kind in enumerate(config.up_block_types):
            c_prev, c_out, c_skip_in = c_out, rev_ch[i], rev_ch[min(i + 1, n - 1)]
            num = rev_layers[i] + 1
            resnets, attentions = [], []
            for j in range(num):
                resnets.append(resnet((c_prev if j == 0 else c_out) + (c_skip_in if j == num - 1 else c_out), c_out))
                if kind == "CrossAttnUpBlock2D":
                    attentions.append(transformer(c_out, rev_heads[i], rev_depth[i], rev_cross[i]))
            up = Upsample2D(c_out) if i < n - 1 else None
            self.up_blocks.append(UpBlock(resnets, attentions or None, up, resolution_idx=i))

        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(
            ch[0], config.out_channels, config.conv_out_kernel, padding=config.conv_out_kernel // 2
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
        *,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        return_dict: bool = True,
        **diffusers_kwargs: Any,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """diffusers' call forms: `unet(x, t, encoder_hidden_states=..., added_cond_kwargs={"text_embeds": ...,
        "time_ids": ...}).sample` or `(..., return_dict=False)[0]`; or pass `text_embeds=`/`time_ids=` directly.

        sample (B, in_channels, H, W); timestep a number, a 0-dim or (B,) tensor; encoder_hidden_states
        (B, T, cross_attention_dim); text_embeds (B, pooled dim); time_ids (B, n_ids); with an IP-Adapter loaded,
        added_cond_kwargs["image_embeds"] and optionally cross_attention_kwargs={"ip_adapter_masks": [...]}.
        `cross_attention_kwargs["scale"]` (diffusers' LoRA scale) is accepted. This is a shim that checks the
        diffusers-only arguments and calls `predict`.
        """
        for key, value in diffusers_kwargs.items():
            if key not in _UNSUPPORTED_FORWARD_KWARGS:
                raise TypeError(f"UNet2DConditionModel.forward() got an unexpected keyword argument {key!r}")
            if value is not None:
                raise TypeError(f"UNet2DConditionModel.forward(): {key} is not supported by sdxl (pass None)")
        lora_scale = check_cross_attention_kwargs(cross_attention_kwargs)
        ip_adapter_masks = (cross_attention_kwargs or {}).get("ip_adapter_masks")
        image_embeds = None
        if added_cond_kwargs is not None:
            if not isinstance(added_cond_kwargs, Mapping):
                raise TypeError(f"added_cond_kwargs must be a dict, got {type(added_cond_kwargs).__name__}")
            unknown = sorted(set(added_cond_kwargs) - _ADDED_COND_KEYS)
            if unknown:
                raise TypeError(f"added_cond_kwargs keys {unknown} are not supported (only {sorted(_ADDED_COND_KEYS)})")
            if text_embeds is not None or time_ids is not None:
                raise TypeError("give text_embeds/time_ids either in added_cond_kwargs or as keywords, not both")
            text_embeds, time_ids = added_cond_kwargs.get("text_embeds"), added_cond_kwargs.get("time_ids")
            image_embeds = added_cond_kwargs.get("image_embeds")
        if not torch.is_tensor(timestep):
            # diffusers makes an int64/float64 tensor that the embedding casts to float32: same values.
            timestep = torch.full((sample.shape[0],), timestep, dtype=torch.float32, device=sample.device)
        with call_scale(self, lora_scale):
            out = self.predict(
                sample, timestep, encoder_hidden_states, text_embeds, time_ids, timestep_cond,
                image_embeds=image_embeds, ip_adapter_masks=ip_adapter_masks,
            )
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def predict(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        *,
        image_embeds: list[torch.Tensor] | None = None,
        ip_adapter_masks: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """The model output (epsilon or v) from explicit tensors: sample (B, C, H, W), timesteps 0-dim, (1,)
        or (B,), context (B, T, D), text_embeds (B, P) and time_ids (B, n_ids) for 'text_time' models;
        image_embeds (one (B, n_images, ...) tensor per loaded IP-Adapter) and their optional masks."""
        cfg = self.config
        context = self._ip_adapter_context(context, image_embeds, ip_adapter_masks)
        batch = sample.shape[0]
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding (no host sync: the timesteps are broadcast, never read)
        timesteps = timesteps.reshape(-1).to(sample.device).expand(batch)  # (B,)
        t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(t_emb.to(sample.dtype), timestep_cond)  # (B, temb_dim)

        # 2. SDXL micro-conditioning: pooled text embedding, then the sinusoidal time ids
        if self.add_embedding is not None:
            self._check_added_cond(text_embeds, time_ids)
            time_embeds = timestep_embedding(
                time_ids.flatten(), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift
            ).reshape(text_embeds.shape[0], -1)  # (B, n_ids * addition_time_embed_dim)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)  # (B, P + n_ids * dim)
            emb = emb + self.add_embedding(add_embeds)
        elif text_embeds is not None or time_ids is not None:
            raise ValueError("text_embeds/time_ids were given but this UNet has no addition embedding")

        # 3. down: keep every intermediate for the skip connections
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips.extend(block_skips)

        # 4. mid
        h = self.mid_block(h, emb, context)

        # 5. up: an odd size somewhere means nearest x2 would overshoot, so upsample to the skip's size
        factor = 2 ** (len(self.up_blocks) - 1)
        explicit_size = any(s % factor != 0 for s in sample.shape[-2:])
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if explicit_size and i < len(self.up_blocks) - 1 else None
            h = block(h, block_skips, emb, context, size)

        # 6. out
        return self.conv_out(silu_(self.conv_norm_out(h)))  # (B, out_channels, H, W)

    def _ip_adapter_context(
        self, context: torch.Tensor, image_embeds: list[torch.Tensor] | None, masks: list[Any] | None
    ) -> torch.Tensor | IPAdapterContext:
        """The text context, or with IP-Adapters loaded an `IPAdapterContext` holding the projected image tokens."""
        if self.encoder_hid_proj is None:
            if image_embeds is not None:
                raise ValueError("image_embeds were given but no IP-Adapter is loaded: call load_ip_adapter() first.")
            return context
        if image_embeds is None:
            raise ValueError(
                "An IP-Adapter is loaded: pass added_cond_kwargs['image_embeds'] (a list with one (B, n_images, ...) "
                "tensor per adapter), or unload_ip_adapter()."
            )
        return IPAdapterContext(context, self.encoder_hid_proj(image_embeds), masks)

    def _check_added_cond(self, text_embeds: torch.Tensor | None, time_ids: torch.Tensor | None) -> None:
        if text_embeds is None or time_ids is None:
            raise ValueError(
                "this UNet (addition_embed_type 'text_time') needs text_embeds and time_ids, e.g. "
                "added_cond_kwargs={'text_embeds': pooled (B, 1280), 'time_ids': (B, 6) or (B, 5) for the refiner}"
            )
        n_ids = time_ids.numel() // text_embeds.shape[0]
        got = text_embeds.shape[-1] + n_ids * self.config.addition_time_embed_dim
        expected = self.config.projection_class_embeddings_input_dim
        if got != expected:
            raise ValueError(
                f"text_embeds {tuple(text_embeds.shape)} and time_ids {tuple(time_ids.shape)} give {got} added "
                f"features, this UNet expects {expected} (= pooled dim + n_time_ids x "
                f"{self.config.addition_time_embed_dim}; SDXL base uses 6 time ids, the refiner 5)"
            )
