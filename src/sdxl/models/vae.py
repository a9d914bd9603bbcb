"""The SDXL VAE (AutoencoderKL): encoder to a diagonal Gaussian over latents, decoder back to pixels.

Architecture, keys and the posterior's sampling follow diffusers 0.42.1
(https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/autoencoders/autoencoder_kl.py and
`autoencoders/vae.py`), so a diffusers state dict loads with `strict=True` and the same generator gives the same
posterior sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdxl.noise import randn_tensor

from .attention import Attention
from .attention_processor import AttentionProcessorsMixin
from .base import ConfiguredModel
from .layers import (
    ConfigMapping,
    Downsample2D,
    ModelOutput,
    ResnetBlock2D,
    Upsample2D,
    build_config,
    config_from_dict,
    config_to_dict,
    silu_,
)
from .vae_tiling import blend_h, blend_v, sliced, tiled

_CLASS_NAME = "AutoencoderKL"
# diffusers builds every VAE norm with this eps, whatever the config says.
_NORM_EPS = 1e-6
_IGNORED_KEYS: frozenset[str] = frozenset()
# diffusers keys for features sdxl does not build: accepted only with these values.
_NEUTRAL_KEYS: dict[str, Any] = {"act_fn": "silu"}


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class VAEConfig(ConfigMapping):
    """AutoencoderKL config; field names are the diffusers config.json keys, defaults diffusers' defaults; reads as a
    dict too, as diffusers' FrozenDict."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, int] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _as_tuple(getattr(self, f.name)))
        n = len(self.block_out_channels)
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            value = getattr(self, key)
            if any(t != allowed for t in value):
                raise ValueError(f"VAE config {key}={list(value)!r} is not supported: only {allowed!r} blocks are")
            if len(value) != n:
                raise ValueError(f"VAE config {key} has {len(value)} entries, block_out_channels {n}")
        if not isinstance(self.layers_per_block, int):
            raise TypeError(f"VAE config layers_per_block={self.layers_per_block!r} must be an int")

    def __getattr__(self, name: str) -> Any:
        if name in _NEUTRAL_KEYS:
            return _NEUTRAL_KEYS[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Read a diffusers `vae/config.json` dict; unsupported values and unknown keys are ValueErrors."""
        return config_from_dict(cls, d, class_name=_CLASS_NAME, ignored=_IGNORED_KEYS, neutral=_NEUTRAL_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """A diffusers-compatible config.json dict (every key, lists for tuples)."""
        return config_to_dict(self, class_name=_CLASS_NAME, neutral=_NEUTRAL_KEYS)

    @classmethod
    def sdxl(cls) -> VAEConfig:
        """stabilityai/stable-diffusion-xl-base-1.0 `vae/config.json` (also the refiner's and madebyollin's fp16 fix,
        which sets force_upcast False)."""
        return cls(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            sample_size=1024,
            scaling_factor=0.13025,
        )


class DiagonalGaussianDistribution:
    """The encoder's posterior: mean and log-variance (clamped to [-30, 20]) from the moments' two halves."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters  # (B, 2 * latent_channels, h, w)
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, latent_channels, h, w) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * noise, the noise drawn in the parameters' dtype as diffusers does."""
        noise = randn_tensor(tuple(self.mean.shape), generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The mean (the most likely latent)."""
        return self.mean


@dataclass
class AutoencoderKLOutput(ModelOutput):
    """`vae.encode(x)`: `.latent_dist` (also `out[0]`)."""

    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput(ModelOutput):
    """`vae.decode(z)` / `vae(x)`: `.sample` (also `out[0]`)."""

    sample: torch.Tensor


class SpatialSelfAttention(Attention):
    """The VAE mid-block attention: GroupNorm, one head over the H*W tokens with head size = channels, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, dim_head=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = self.group_norm(x.reshape(b, c, h * w)).transpose(1, 2)  # (B, HW, C)
        out = super().forward(tokens)  # (B, HW, C)
        return out.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    """UNetMidBlock2D without time embedding: resnet, (attention), resnet."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        # built resnet, attention, resnet (diffusers' order: the same seed gives the same random weights)
        first = ResnetBlock2D(channels, channels, None, groups, _NORM_EPS)
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)] if add_attention else [])
        self.resnets = nn.ModuleList([first, ResnetBlock2D(channels, channels, None, groups, _NORM_EPS)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    """DownEncoderBlock2D: resnets, then (except at the last level) the pad-and-stride-2 downsampler."""

    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c_in if i == 0 else c_out, c_out, None, groups, _NORM_EPS) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(c_out, padding=0)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class DecoderBlock(nn.Module):
    """UpDecoderBlock2D: resnets, then (except at the last level) nearest x2 + conv."""

    def __init__(self, c_in: int, c_out: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c_in if i == 0 else c_out, c_out, None, groups, _NORM_EPS) for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(c_out)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> moments (B, 2 * latent_channels, H / 2^(levels-1), W / 2^(levels-1))."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups, n = config.block_out_channels, config.norm_num_groups, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            [EncoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block, groups, i < n - 1) for i in range(n)]
        )
        self.mid_block = MidBlock(ch[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_NORM_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu_(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (B, latent_channels, h, w) -> image (B, out_channels, h * 2^(levels-1), w * 2^(levels-1))."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        rev, groups, n = config.block_out_channels[::-1], config.norm_num_groups, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.latent_channels, rev[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock(rev[0], groups, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [
                DecoderBlock(rev[max(i - 1, 0)], rev[i], config.layers_per_block + 1, groups, i < n - 1)
                for i in range(n)
            ]
        )
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=_NORM_EPS)
        self.conv_out = nn.Conv2d(rev[-1], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu_(self.conv_norm_out(x)))


class AutoencoderKL(AttentionProcessorsMixin, ConfiguredModel):
    """The SDXL VAE with diffusers' methods: `encode(x).latent_dist`, `decode(z).sample`, `config.scaling_factor`.

    Built from a `VAEConfig`, a config.json dict or diffusers' keyword arguments (`AutoencoderKL(block_out_channels=
    [32, 64], ...)`); a fresh model gets diffusers' random weights for the same seed. Latents are not scaled here: pipelines multiply by `config.scaling_factor` after encoding and divide before
    decoding, as with diffusers.

    Memory options, as diffusers: `enable_slicing()` encodes/decodes one batch item at a time; `enable_tiling()`
    splits inputs larger than `tile_sample_min_size` pixels (`tile_latent_min_size` latents; default the config's
    `sample_size`) into tiles overlapping by `tile_overlap_factor`, blended across the seams (see `vae_tiling`).
    """

    def __init__(self, config: VAEConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        config = build_config(VAEConfig, config, kwargs, "AutoencoderKL")
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, kernel_size=1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1) if config.use_post_quant_conv else None
        # memory options (plain attributes, as diffusers: users may set the tile sizes directly)
        self.use_slicing = False
        self.use_tiling = False
        size = config.sample_size[0] if isinstance(config.sample_size, tuple) else config.sample_size
        self.tile_sample_min_size = int(size)
        self.tile_latent_min_size = int(size / 2 ** (len(config.block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    def enable_tiling(self) -> None:
        """Encode/decode large inputs in overlapping tiles (less memory; outputs differ slightly near seams)."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Encode/decode in one piece again."""
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode/decode a batch one item at a time (less memory for large batches; same outputs)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        """Encode/decode the whole batch at once again."""
        self.use_slicing = False

    # diffusers' method names for the seam blending, for code written against it
    blend_v = staticmethod(blend_v)
    blend_h = staticmethod(blend_h)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """One batch of images (B, 3, H, W) in [-1, 1] -> posterior moments (B, 2 * latent_channels, h, w)."""
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled_encode(x)
        return self._encode_tile(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """One batch of latents (B, latent_channels, h, w) -> images (B, 3, H, W), roughly in [-1, 1]."""
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled_decode(z)
        return self._decode_tile(z)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> posterior moments, encoded in overlapping `tile_sample_min_size` tiles."""
        return tiled(self._encode_tile, x, self.tile_sample_min_size, self.tile_latent_min_size, self.tile_overlap_factor)

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images, decoded in overlapping `tile_latent_min_size` tiles."""
        return tiled(self._decode_tile, z, self.tile_latent_min_size, self.tile_sample_min_size, self.tile_overlap_factor)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[Any]:
        """Tiled `encode` whatever the input size (diffusers' public method)."""
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Tiled `decode` whatever the latent size (diffusers' public method)."""
        images = self._tiled_decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images (B, in_channels, H, W) -> `.latent_dist`, a DiagonalGaussianDistribution (unscaled latents)."""
        moments = sliced(self._encode, x) if self.use_slicing and x.shape[0] > 1 else self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Unscaled latents (B, latent_channels, h, w) -> `.sample` images. `generator` is accepted and unused,
        as in diffusers (the decoder is deterministic)."""
        images = sliced(self._decode, z) if self.use_slicing and z.shape[0] > 1 else self._decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode (the posterior's mode, or a sample of it with `sample_posterior`)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
