"""UNetConfig: the UNet's hyper-parameters as a frozen dataclass whose fields are diffusers' config.json keys.

Presets for the SDXL base, refiner and 9-channel inpainting UNets; any diffusers config value sdxl does not build is
refused here, at config time (see `config_from_dict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .layers import ConfigMapping, config_from_dict, config_to_dict

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

PerLevel = int | tuple[int, ...]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class UNetConfig(ConfigMapping):
    """UNet2DConditionModel config; field names are the diffusers config.json keys, defaults diffusers' defaults.

    Reads as a dict too (`config["block_out_channels"]`, `config.get(...)`), as diffusers' FrozenDict.

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

