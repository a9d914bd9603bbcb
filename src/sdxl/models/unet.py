"""The SDXL UNet: one config-driven class for the base, the refiner and the 9-channel inpainting model.

Architecture and state-dict keys follow diffusers 0.42.1 `UNet2DConditionModel`
(https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/unets/unet_2d_condition.py)
restricted to what SDXL (and SD 1.x) checkpoints use; any other config value is refused at config time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Transformer2DModel
from .base import ConfiguredModel
from .layers import (
    Downsample2D,
    ModelOutput,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    config_from_dict,
    config_to_dict,
    timestep_embedding,
)
from .lora import call_scale, check_cross_attention_kwargs

_CLASS_NAME = "UNet2DConditionModel"
_DOWN_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
_ADDITION_EMBED_TYPES = (None, "text_time")
# Training-only keys.
_IGNORED_KEYS = frozenset({"dropout"})
# diffusers keys for features sdxl does not build: accepted only with these values (which switch them off).
_NEUTRAL_KEYS: dict[str, Any] = {
    "act_fn": "silu",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "dual_cross_attention": False,
    "upcast_attention": False,
    "num_attention_heads": None,
    "reverse_transformer_layers_per_block": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_type": "default",
    "cross_attention_norm": None,
}
# forward() keywords of diffusers' UNet that we do not implement: refused when they carry a value.
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

PerLevel = int | tuple[int, ...]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class UNetConfig:
    """UNet2DConditionModel config; field names are the diffusers config.json keys, defaults diffusers' defaults.

    Note the diffusers naming quirk: `attention_head_dim` is the NUMBER OF HEADS per level (diffusers reads it
    as `num_attention_heads` when that key is None, which it always is); the head size is channels // heads.
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: PerLevel = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: PerLevel = 1280
    transformer_layers_per_block: PerLevel = 1
    attention_head_dim: PerLevel = 8
    use_linear_projection: bool = False
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    # Read by diffusers only for addition_embed_type "text" (not built here); kept so configs round-trip.
    addition_embed_type_num_heads: int = 64
    time_embedding_dim: int | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _as_tuple(getattr(self, f.name)))
        self._validate()

    def _validate(self) -> None:
        n = len(self.block_out_channels)
        for key, allowed in (("down_block_types", _DOWN_TYPES), ("up_block_types", _UP_TYPES)):
            bad = [t for t in getattr(self, key) if t not in allowed]
            if bad:
                raise ValueError(f"UNet config {key} contains {bad}: supported block types are {allowed}")
            if len(getattr(self, key)) != n:
                raise ValueError(f"UNet config {key} has {len(getattr(self, key))} entries, block_out_channels {n}")
        for key in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim"):
            value = getattr(self, key)
            if isinstance(value, tuple):
                if len(value) != n:
                    raise ValueError(f"UNet config {key}={value!r} needs one entry per level ({n})")
                if not all(isinstance(v, int) for v in value):
                    raise ValueError(
                        f"UNet config {key}={value!r} is not supported: give an int or one int per level "
                        "(per-block lists of asymmetric UNets are not implemented)"
                    )
            elif not isinstance(value, int):
                raise TypeError(f"UNet config {key}={value!r} must be an int or a list of ints")
        if self.addition_embed_type not in _ADDITION_EMBED_TYPES:
            raise ValueError(
                f"UNet config addition_embed_type={self.addition_embed_type!r} is not supported: "
                f"supported values are {_ADDITION_EMBED_TYPES}"
            )
        if self.addition_embed_type == "text_time":
            for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
                if not isinstance(getattr(self, key), int):
                    raise TypeError(f"UNet config {key}={getattr(self, key)!r}: 'text_time' needs an int")
        heads = self.per_level("attention_head_dim")
        for level, (kind, ch) in enumerate(zip(self.down_block_types, self.block_out_channels)):
            # the mid block's transformer uses the last level's heads, whatever that level's block type
            if (kind.startswith("CrossAttn") or level == n - 1) and ch % heads[level]:
                raise ValueError(
                    f"UNet config attention_head_dim (the number of heads) {heads[level]} does not divide "
                    f"block_out_channels[{level}]={ch}"
                )

    def __getattr__(self, name: str) -> Any:
        # `unet.config.class_embed_type` etc. read as in diffusers: the neutral value of a feature we do not build.
        if name in _NEUTRAL_KEYS:
            return _NEUTRAL_KEYS[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def per_level(self, key: str) -> tuple[int, ...]:
        """An int-or-list field as one value per level (down-block order)."""
        value = getattr(self, key)
        return value if isinstance(value, tuple) else (value,) * len(self.block_out_channels)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Read a diffusers `unet/config.json` dict; unsupported values and unknown keys are ValueErrors."""
        return config_from_dict(cls, d, class_name=_CLASS_NAME, ignored=_IGNORED_KEYS, neutral=_NEUTRAL_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """A diffusers-compatible config.json dict (every key, lists for tuples)."""
        return config_to_dict(self, class_name=_CLASS_NAME, neutral=_NEUTRAL_KEYS)

    @classmethod
    def sdxl_base(cls) -> UNetConfig:
        """stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json` (2,567,463,684 parameters)."""
        return cls(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,  # pooled text 1280 + 6 time ids x 256
        )

    @classmethod
    def sdxl_refiner(cls) -> UNetConfig:
        """stabilityai/stable-diffusion-xl-refiner-1.0 `unet/config.json`: 4 levels, OpenCLIP-G context only,
        5 time ids (aesthetic score in place of the target size)."""
        return cls(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(384, 768, 1536, 1536),
            cross_attention_dim=1280,
            transformer_layers_per_block=4,
            attention_head_dim=(6, 12, 24, 24),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2560,  # pooled text 1280 + 5 time ids x 256
        )

    @classmethod
    def sdxl_inpaint(cls) -> UNetConfig:
        """diffusers/stable-diffusion-xl-1.0-inpainting-0.1: the base with 9 input channels
        (4 noisy latents + 1 mask + 4 masked-image latents)."""
        return dataclasses.replace(cls.sdxl_base(), in_channels=9)


@dataclass
class UNet2DConditionOutput(ModelOutput):
    """What the UNet returns with `return_dict=True`: `.sample` (also `out[0]`), shaped like the input sample."""

    sample: torch.Tensor


class DownBlock(nn.Module):
    """DownBlock2D / CrossAttnDownBlock2D: resnets (each followed by a transformer in the cross-attention
    variant), then an optional stride-2 downsampler. Returns the output and one skip tensor per stage."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, downsampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.downsamplers = nn.ModuleList([downsampler]) if downsampler is not None else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module]):
        super().__init__()
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


class UpBlock(nn.Module):
    """UpBlock2D / CrossAttnUpBlock2D: each resnet takes the running tensor concatenated with one skip tensor
    (last in, first out), a transformer follows in the cross-attention variant; then an optional upsampler."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, upsampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)  # (B, C + C_skip, H, W)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet2DConditionModel(ConfiguredModel):
    """The SDXL denoising UNet (base, refiner or inpainting, from `UNetConfig`), diffusers' keys and call forms."""

    def __init__(self, config: UNetConfig):
        super().__init__()
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
        self.add_embedding = None
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb_dim)

        self.down_blocks = nn.ModuleList()
        c_out = ch[0]
        for i, kind in enumerate(config.down_block_types):
            c_in, c_out = c_out, ch[i]
            attn = kind == "CrossAttnDownBlock2D"
            self.down_blocks.append(
                DownBlock(
                    [resnet(c_in if j == 0 else c_out, c_out) for j in range(layers[i])],
                    [transformer(c_out, heads[i], depth[i], cross_dim[i]) for _ in range(layers[i])] if attn else None,
                    Downsample2D(c_out, padding=config.downsample_padding) if i < n - 1 else None,
                )
            )

        scale = config.mid_block_scale_factor
        self.mid_block = MidBlock(
            [resnet(ch[-1], ch[-1], scale), resnet(ch[-1], ch[-1], scale)],
            [transformer(ch[-1], heads[-1], depth[-1], cross_dim[-1])],
        )

        self.up_blocks = nn.ModuleList()
        rev_ch, rev_heads, rev_layers = ch[::-1], heads[::-1], layers[::-1]
        rev_depth, rev_cross = depth[::-1], cross_dim[::-1]
        c_out = rev_ch[0]
        for i, kind in enumerate(config.up_block_types):
            c_prev, c_out, c_skip_in = c_out, rev_ch[i], rev_ch[min(i + 1, n - 1)]
            num = rev_layers[i] + 1
            attn = kind == "CrossAttnUpBlock2D"
            self.up_blocks.append(
                UpBlock(
                    [
                        resnet((c_prev if j == 0 else c_out) + (c_skip_in if j == num - 1 else c_out), c_out)
                        for j in range(num)
                    ],
                    [transformer(c_out, rev_heads[i], rev_depth[i], rev_cross[i]) for _ in range(num)]
                    if attn
                    else None,
                    Upsample2D(c_out) if i < n - 1 else None,
                )
            )

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
        (B, T, cross_attention_dim); text_embeds (B, pooled dim); time_ids (B, n_ids). This is a shim that
        checks the diffusers-only arguments and calls `predict`.
        """
        for key, value in diffusers_kwargs.items():
            if key not in _UNSUPPORTED_FORWARD_KWARGS:
                raise TypeError(f"UNet2DConditionModel.forward() got an unexpected keyword argument {key!r}")
            if value is not None:
                raise TypeError(f"UNet2DConditionModel.forward(): {key} is not supported by sdxl (pass None)")
        lora_scale = check_cross_attention_kwargs(cross_attention_kwargs)
        if added_cond_kwargs is not None:
            if not isinstance(added_cond_kwargs, Mapping):
                raise TypeError(f"added_cond_kwargs must be a dict, got {type(added_cond_kwargs).__name__}")
            unknown = sorted(set(added_cond_kwargs) - {"text_embeds", "time_ids"})
            if unknown:
                raise TypeError(f"added_cond_kwargs keys {unknown} are not supported (only text_embeds, time_ids)")
            if text_embeds is not None or time_ids is not None:
                raise TypeError("give text_embeds/time_ids either in added_cond_kwargs or as keywords, not both")
            text_embeds, time_ids = added_cond_kwargs.get("text_embeds"), added_cond_kwargs.get("time_ids")
        if not torch.is_tensor(timestep):
            # diffusers makes an int64/float64 tensor that the embedding casts to float32: same values.
            timestep = torch.full((sample.shape[0],), timestep, dtype=torch.float32, device=sample.device)
        with call_scale(self, lora_scale):
            out = self.predict(sample, timestep, encoder_hidden_states, text_embeds, time_ids, timestep_cond)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def predict(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model output (epsilon or v) from explicit tensors: sample (B, C, H, W), timesteps 0-dim, (1,)
        or (B,), context (B, T, D), text_embeds (B, P) and time_ids (B, n_ids) for 'text_time' models."""
        cfg = self.config
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
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, out_channels, H, W)

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
