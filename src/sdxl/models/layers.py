"""Building blocks shared by the UNet and the VAE: timestep embedding, resnet block, down/upsampling, attention.

Every formula here reproduces diffusers 0.42.1 (`models/embeddings.py`, `models/resnet.py`,
`models/downsampling.py`, `models/upsampling.py`) so that state dicts load unchanged and outputs agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import sdpa_kernel

from .sdpa_kernels import AttentionKernels


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernels: AttentionKernels | None = None) -> torch.Tensor:
    """Softmax attention, the one place a kernel is chosen: (B, heads, Lq, d), (B, heads, Lk, d) x2 -> (B, heads, Lq, d).

    Scale is d**-0.5, no mask, no dropout (what every SDXL attention uses). `kernels` (the layer's, set by
    `pipe.optimize()`) names the SDPA backends for this shape; None runs PyTorch's own choice.
    """
    backends = kernels.backends(q, k) if kernels is not None else None
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(list(backends), set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a temporary (a norm's fresh output), in place when no gradient needs its input: one activation of
    that size less at the memory peak (the VAE decode at 1024 px holds several 256-512 MB ones). Same values."""
    return F.silu(x, inplace=not x.requires_grad)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: int = 10000
) -> torch.Tensor:
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) timesteps: (N,) -> (N, dim), float32.

    As diffusers' `get_timestep_embedding`: frequencies exp(-ln(max_period) * i / (dim/2 - freq_shift)),
    [sin, cos] halves ([cos, sin] with `flip_sin_to_cos`), a zero column appended when `dim` is odd.
    https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/embeddings.py#L27
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]  # (N, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (N, 2*half)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    """MLP over a sinusoidal embedding: linear_1 -> SiLU -> linear_2 (diffusers keys), optional `cond_proj` input."""

    def __init__(self, in_channels: int, embed_dim: int, cond_proj_dim: int | None = None):
        super().__init__()
        # diffusers' order (linear_1, cond_proj, linear_2): the same seed gives the same random weights
        self.linear_1 = nn.Linear(in_channels, embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("timestep_cond was given but this model has no `time_cond_proj_dim` (no cond_proj).")
            sample = sample + self.cond_proj(condition)
        return self.linear_2(self.act(self.linear_1(sample)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added between (when `temb_channels` is set), 1x1 skip conv
    when the channel count changes; output = (skip + h) / output_scale_factor."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W), temb (B, temb_channels) when the block has one -> (B, C_out, H, W)."""
        h = self.conv1(silu_(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        h = self.conv2(silu_(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        # h is this block's own temporary: outside autograd, add into it rather than allocate the sum
        out = h.add_(skip) if not h.requires_grad else skip + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """3x3 conv with stride 2. `padding=0` is the VAE variant: pad right/bottom by one, then an unpadded conv."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to an explicit `output_size`, for odd latent sizes) followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)


class ModelOutput:
    """Tuple-style access for output dataclasses, as diffusers' `BaseOutput`: `out[0]`, `out["sample"]`,
    `out.to_tuple()` (fields that are None are left out, as diffusers does)."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]


# --- config.json <-> frozen dataclass (shared by the model configs) ---------------------------------------------

# Keys diffusers writes that carry no architecture: metadata, and training-only settings.
METADATA_KEYS = frozenset(
    {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "_commit_hash"}
)


def _is_neutral(value: Any, neutral: Any) -> bool:
    """Whether a config value means "feature off": equal to the neutral value (elementwise for per-level lists)."""
    if isinstance(value, (list, tuple)):
        return all(_is_neutral(v, neutral) for v in value)
    if neutral is None or neutral is False:
        return value is None or value is False
    return value == neutral


def config_from_dict(
    cls: type, d: Mapping[str, Any], *, class_name: str, ignored: frozenset[str], neutral: dict[str, Any]
) -> Any:
    """Build the frozen config dataclass `cls` from a config.json dict.

    Fields of `cls` are taken as they are (the dataclass validates them); `METADATA_KEYS` and `ignored` are
    skipped; a key in `neutral` (a feature we do not build) must hold its neutral value; any other key must be
    None/False. Everything else is a ValueError naming the key, so a checkpoint we cannot run is never loaded
    into a model that would compute something else.
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict (a parsed config.json), got {type(d).__name__}")
    if d.get("_class_name", class_name) != class_name:
        raise ValueError(
            f"config has _class_name={d['_class_name']!r}; {cls.__name__} reads {class_name!r} configs only"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key in names:
            kwargs[key] = value
        elif key in METADATA_KEYS or key in ignored:
            continue
        elif key in neutral:
            if not _is_neutral(value, neutral[key]):
                raise ValueError(
                    f"{class_name} config key {key!r} = {value!r} is not supported: only {neutral[key]!r} is "
                    f"(this feature is not implemented in sdxl)"
                )
        elif value is not None and value is not False:
            raise ValueError(
                f"unknown {class_name} config key {key!r} = {value!r}: sdxl does not know what it changes; "
                f"supported keys are {sorted(names | set(neutral))}"
            )
    return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_to_dict(config: Any, *, class_name: str, neutral: dict[str, Any]) -> dict[str, Any]:
    """A config.json-compatible dict: `_class_name`, every field (tuples as lists), and the neutral keys."""
    out: dict[str, Any] = {"_class_name": class_name}
    out.update({f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)})
    out.update({k: _jsonable(v) for k, v in neutral.items()})
    return out


class ConfigMapping(Mapping):
    """Read access to a frozen config dataclass as diffusers' `FrozenDict`: `config["key"]`, `config.get("key")`,
    `"key" in config`, `dict(config)`, besides attribute access. Keys are those of `to_dict()` (config.json's)."""

    def __getitem__(self, key: str) -> Any:
        names = {f.name for f in dataclasses.fields(self)}
        if key in names:
            return getattr(self, key)  # tuples stay tuples (to_dict writes lists)
        as_dict = self.to_dict()
        if key not in as_dict:
            raise KeyError(key)
        return as_dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def build_config(cls: type, config: Any, kwargs: Mapping[str, Any], model_name: str) -> Any:
    """The config a model constructor was given: a `cls` instance as it is; a config.json-style mapping, a reference
    config object (its `to_dict()`), and/or diffusers' constructor keywords (`UNet2DConditionModel(block_out_channels=..., ...)`) through `cls.from_dict`."""
    if isinstance(config, cls) and not kwargs:
        return config
    if config is None:
        return cls.from_dict(dict(kwargs))
    if isinstance(config, cls):
        return dataclasses.replace(config, **kwargs)
    if not isinstance(config, Mapping) and callable(getattr(config, "to_dict", None)):
        config = config.to_dict()  # a transformers/diffusers config object
    if isinstance(config, Mapping):
        return cls.from_dict({**config, **kwargs})
    raise TypeError(
        f"{model_name}() takes a {cls.__name__}, a config dict or diffusers' keyword arguments "
        f"(e.g. {model_name}(block_out_channels=(32, 64), ...)), got {type(config).__name__}"
    )
