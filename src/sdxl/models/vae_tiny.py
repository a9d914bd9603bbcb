"""AutoencoderTiny: TAESD, the tiny distilled VAE (madebyollin/taesdxl for SDXL), with diffusers' keys and config.

Plain conv + ReLU residual blocks, 8x down/upsampling, no attention and no posterior: `encode(x).latents`,
`decode(z).sample`. Decoding clamps the latents softly (tanh(z/3)*3) and maps [0, 1] output to [-1, 1]; encoding maps
[-1, 1] input to [0, 1]. As diffusers 0.42.1 `models/autoencoders/autoencoder_tiny.py` and `vae.py`
(`EncoderTiny`, `DecoderTiny`), `unets/unet_2d_blocks.py` (`AutoencoderTinyBlock`); the config registers
`block_out_channels` (the decoder's, so pipelines find the 8x scale) and `force_upcast=False`, as diffusers does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import ConfiguredModel
from .layers import ConfigMapping, ModelOutput, build_config, config_from_dict, config_to_dict
from .vae import DecoderOutput

_CLASS_NAME = "AutoencoderTiny"
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish}
# keys diffusers registers on the config itself (derived, not constructor arguments)
_IGNORED_KEYS = frozenset({"block_out_channels"})


@dataclass(frozen=True)
class AutoencoderTinyConfig(ConfigMapping):
    """AutoencoderTiny config; field names are the diffusers config.json keys, defaults diffusers' (= taesd's)."""

    in_channels: int = 3
    out_channels: int = 3
    encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    act_fn: str = "relu"
    upsample_fn: str = "nearest"
    latent_channels: int = 4
    upsampling_scaling_factor: int = 2
    num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    latent_magnitude: float = 3
    latent_shift: float = 0.5
    force_upcast: bool = False
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if len(self.encoder_block_out_channels) != len(self.num_encoder_blocks):
            raise ValueError("AutoencoderTiny config: encoder_block_out_channels and num_encoder_blocks differ in length")
        if len(self.decoder_block_out_channels) != len(self.num_decoder_blocks):
            raise ValueError("AutoencoderTiny config: decoder_block_out_channels and num_decoder_blocks differ in length")
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(f"AutoencoderTiny config act_fn={self.act_fn!r} is not supported: {sorted(_ACTIVATIONS)}")
        if self.upsample_fn not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"AutoencoderTiny config upsample_fn={self.upsample_fn!r} is not supported")
        if self.shift_factor:
            raise ValueError("AutoencoderTiny config shift_factor must be 0: diffusers' SDXL pipelines do not use it")

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        """The decoder's channels, under the key pipelines read for the VAE scale factor (diffusers registers it)."""
        return self.decoder_block_out_channels

    @property
    def latents_mean(self) -> None:
        return None

    latents_std = latents_mean

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderTinyConfig:
        """Read a diffusers `config.json` dict; unsupported values and unknown keys are ValueErrors."""
        return config_from_dict(cls, d, class_name=_CLASS_NAME, ignored=_IGNORED_KEYS, neutral={})

    def to_dict(self) -> dict[str, Any]:
        """A diffusers-compatible config.json dict."""
        out = config_to_dict(self, class_name=_CLASS_NAME, neutral={})
        out["block_out_channels"] = list(self.block_out_channels)
        return out

    @classmethod
    def taesdxl(cls) -> AutoencoderTinyConfig:
        """madebyollin/taesdxl's config: diffusers' defaults."""
        return cls()


@dataclass
class AutoencoderTinyOutput(ModelOutput):
    """`vae.encode(x)`: `.latents` (also `out[0]`)."""

    latents: torch.Tensor


class AutoencoderTinyBlock(nn.Module):
    """Three 3x3 convs with the activation between, plus the input (1x1 conv when channels change), then ReLU."""

    def __init__(self, c_in: int, c_out: int, act_fn: str):
        super().__init__()
        act = _ACTIVATIONS[act_fn]
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), act(), nn.Conv2d(c_out, c_out, 3, padding=1), act(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class EncoderTiny(nn.Module):
    """conv in, then per level a stride-2 conv (not the first) and its blocks, then conv to the latent channels."""

    def __init__(self, config: AutoencoderTinyConfig):
        super().__init__()
        channels = config.encoder_block_out_channels
        layers: list[nn.Module] = []
        for i, n in enumerate(config.num_encoder_blocks):
            c = channels[i]
            if i == 0:
                layers.append(nn.Conv2d(config.in_channels, c, 3, padding=1))
            else:
                layers.append(nn.Conv2d(c, c, 3, padding=1, stride=2, bias=False))
            layers += [AutoencoderTinyBlock(c, c, config.act_fn) for _ in range(n)]
        layers.append(nn.Conv2d(channels[-1], config.latent_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, latent_channels, H/8, W/8); TAESD works on [0, 1] images."""
        return self.layers(x.add(1).div(2))


class DecoderTiny(nn.Module):
    """conv in + activation, then per level its blocks, an upsampling (not the last) and a conv."""

    def __init__(self, config: AutoencoderTinyConfig):
        super().__init__()
        channels = config.decoder_block_out_channels
        layers: list[nn.Module] = [
            nn.Conv2d(config.latent_channels, channels[0], 3, padding=1), _ACTIVATIONS[config.act_fn]()
        ]
        last = len(config.num_decoder_blocks) - 1
        for i, n in enumerate(config.num_decoder_blocks):
            c = channels[i]
            layers += [AutoencoderTinyBlock(c, c, config.act_fn) for _ in range(n)]
            if i != last:
                layers.append(nn.Upsample(scale_factor=config.upsampling_scaling_factor, mode=config.upsample_fn))
            layers.append(nn.Conv2d(c, config.out_channels if i == last else c, 3, padding=1, bias=i == last))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> (B, 3, 8h, 8w) in about [-1, 1]; latents soft-clamped to (-3, 3) first."""
        z = torch.tanh(z / 3) * 3
        return self.layers(z).mul(2).sub(1)


class AutoencoderTiny(ConfiguredModel):
    """TAESD with diffusers' surface: `encode(x).latents`, `decode(z).sample`, `config.scaling_factor` (1.0), and
    `scale_latents`/`unscale_latents` (the 8-bit latent packing TAESD's forward round-trips through)."""

    def __init__(self, config: AutoencoderTinyConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        # also diffusers' keyword form, AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=4)
        config = build_config(AutoencoderTinyConfig, config, kwargs, "AutoencoderTiny")
        self.config = config
        self.encoder = EncoderTiny(config)
        self.decoder = DecoderTiny(config)
        # memory options, diffusers' attributes and defaults (its scale is 2**out_channels: 8 for RGB)
        self.use_slicing = False
        self.use_tiling = False
        self.spatial_scale_factor = 2**config.out_channels
        self.tile_overlap_factor = 0.125
        self.tile_sample_min_size = 512
        self.tile_latent_min_size = self.tile_sample_min_size // self.spatial_scale_factor

    def enable_slicing(self) -> None:
        """Encode/decode one batch item at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode/decode in overlapping tiles of `tile_sample_min_size` pixels, blended linearly across the seams."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.enable_tiling(False)

    def _tiled(self, x: torch.Tensor, run: nn.Module, tile: int, scale: float, channels: int) -> torch.Tensor:
        """Run `run` over tiles of `tile` input pixels; the output is `scale` times the input's size. Each tile is
        blended over what earlier tiles wrote, with ramps over the overlap (none on the first row/column)."""
        blend = int(tile * self.tile_overlap_factor)
        step = tile - blend
        out_tile, out_blend = int(tile * scale), int(blend * scale)
        ramp = (torch.arange(out_tile) / (out_blend - 1)).clamp(0, 1).to(x.device)  # (out_tile,)
        out = torch.zeros(x.shape[0], channels, int(x.shape[-2] * scale), int(x.shape[-1] * scale), device=x.device)
        for i in range(0, x.shape[-2], step):
            for j in range(0, x.shape[-1], step):
                piece = run(x[..., i : i + tile, j : j + tile])
                h, w = piece.shape[-2:]
                target = out[..., int(i * scale) : int(i * scale) + h, int(j * scale) : int(j * scale) + w]
                rows = torch.ones_like(ramp) if i == 0 else ramp
                cols = torch.ones_like(ramp) if j == 0 else ramp
                mask = (rows[:, None] * cols[None, :])[:h, :w]  # (h, w)
                target.copy_(mask * piece + (1 - mask) * target)
        return out

    def _run(self, x: torch.Tensor, encode: bool) -> torch.Tensor:
        sf = self.spatial_scale_factor
        if encode:
            one = (lambda t: self._tiled(t, self.encoder, self.tile_sample_min_size, 1 / sf,
                                         self.config.latent_channels)) if self.use_tiling else self.encoder
        else:
            one = (lambda t: self._tiled(t, self.decoder, self.tile_latent_min_size, sf,
                                         self.config.out_channels)) if self.use_tiling else self.decoder
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([one(row) for row in x.split(1)])
        return one(x)

    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latents -> [0, 1]."""
        return x.div(2 * self.config.latent_magnitude).add(self.config.latent_shift).clamp(0, 1)

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents."""
        return x.sub(self.config.latent_shift).mul(2 * self.config.latent_magnitude)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> `.latents` (B, C, H/8, W/8)."""
        latents = self._run(x, encode=True)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(
        self, z: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (B, C, h, w) -> `.sample` images (B, 3, 8h, 8w) in about [-1, 1]."""
        image = self._run(z, encode=False)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode, pack the latents to 8 bits and back, decode (diffusers' forward)."""
        latents = self.encode(sample).latents
        packed = self.scale_latents(latents).mul_(255).round_().byte()
        image = self.decode(self.unscale_latents(packed / 255.0)).sample
        return DecoderOutput(sample=image) if return_dict else (image,)
