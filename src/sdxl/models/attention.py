"""Attention, GEGLU feed-forward and the spatial transformer of SDXL's cross-attention blocks.

Module and parameter names are diffusers' (0.42.1, `models/attention_processor.py` `Attention`,
`models/attention.py` `BasicTransformerBlock`/`FeedForward`, `models/transformers/transformer_2d.py`),
so a diffusers state dict loads with `strict=True`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention_processor import AttnProcessor2_0


class Attention(nn.Module):
    """Multi-head attention with to_q/to_k/to_v/to_out projections; self-attention when no context is given.

    The computation is `self.processor` (default `AttnProcessor2_0`, SDPA), swappable as in diffusers
    (`set_processor`; see `attention_processor.py`).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        out_bias: bool = True,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner_dim, bias=bias)
        # nn.Identity stands where diffusers has Dropout, so the output projection keeps its key `to_out.0`.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Identity()])
        self.is_cross_attention = cross_attention_dim is not None
        self.processor: Any = AttnProcessor2_0()
        self.fused_projections = False
        self.fused_qkv_weight = self.fused_qkv_bias = self.fused_kv_weight = self.fused_kv_bias = None

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """x (B, Lq, query_dim), context (B, Lk, cross_attention_dim) or None (self-attention), or an
        `IPAdapterContext` for the IP-Adapter processor -> (B, Lq, query_dim)."""
        return self.processor(self, x, context)

    def set_processor(self, processor: Any) -> None:
        """Use `processor` (an object called as `processor(attn, x, context)`) for this layer."""
        if not callable(processor):
            raise TypeError(f"An attention processor must be callable, got {type(processor).__name__}.")
        if isinstance(self.processor, nn.Module) and not isinstance(processor, nn.Module):
            del self._modules["processor"]  # nn.Module refuses to replace a child module by a plain object
        self.processor = processor

    def get_processor(self) -> Any:
        return self.processor

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate to_q|to_k|to_v (self-attention) or to_k|to_v (cross-attention) weights into one matrix, kept
        as non-persistent buffers (state dicts keep diffusers' keys)."""
        def cat(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = torch.cat([p.weight for p in layers])
            bias = torch.cat([p.bias for p in layers]) if layers[0].bias is not None else None
            return weight, bias

        prefix = "fused_kv" if self.is_cross_attention else "fused_qkv"
        weight, bias = cat([self.to_k, self.to_v] if self.is_cross_attention else [self.to_q, self.to_k, self.to_v])
        for name, value in ((f"{prefix}_weight", weight), (f"{prefix}_bias", bias)):
            self.__dict__.pop(name, None)  # the plain None attribute gives way to the buffer
            self.register_buffer(name, value, persistent=False)
        self.fused_projections = True

    def unfuse_projections(self) -> None:
        """Drop the fused weights (the separate projections were kept all along)."""
        for name in ("fused_qkv_weight", "fused_qkv_bias", "fused_kv_weight", "fused_kv_bias"):
            self._buffers.pop(name, None)
            setattr(self, name, None)
        self.fused_projections = False


class GEGLU(nn.Module):
    """Gated GELU: one projection to 2*dim_out, split into value and gate; value * gelu(gate) (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GELU(nn.Module):
    """Linear then exact GELU (diffusers' `GELU` activation module, key `proj`)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


_ACTIVATIONS = {"geglu": GEGLU, "gelu": GELU}


class FeedForward(nn.Module):
    """activation(dim -> mult*dim) then Linear to dim_out (default dim); keys `net.0.proj`, `net.2`.

    `activation` "geglu" (the UNet's transformer blocks) or "gelu" (IP-Adapter image projections)."""

    def __init__(
        self, dim: int, dim_out: int | None = None, mult: float = 4, activation: str = "geglu", bias: bool = True
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"FeedForward activation {activation!r} is not supported; use one of {list(_ACTIVATIONS)}")
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        # nn.Identity stands where diffusers has Dropout, so the output linear keeps its key `net.2`.
        self.net = nn.ModuleList(
            [_ACTIVATIONS[activation](dim, inner_dim, bias), nn.Identity(), nn.Linear(inner_dim, dim_out, bias=bias)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention over the text context, GEGLU feed-forward; each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: Any) -> torch.Tensor:
        """x (B, L, dim), context (B, T, cross_attention_dim) or an `IPAdapterContext` -> (B, L, dim)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in, `num_layers` transformer blocks over the H*W tokens, proj_out, plus the input.

    `use_linear_projection` (SDXL) projects the flattened tokens with Linear layers; otherwise 1x1 convs
    project before flattening (SD 1.x).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        num_layers: int,
        cross_attention_dim: int,
        norm_num_groups: int,
        use_linear_projection: bool,
        group_norm_eps: float = 1e-6,  # diffusers hard-codes both eps values, whatever the UNet's norm_eps
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=group_norm_eps)
        # built in diffusers' order (proj_in, blocks, proj_out): the same seed gives the same random weights
        projection = nn.Linear if use_linear_projection else lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1)
        self.proj_in = projection(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, layer_norm_eps)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = projection(channels, channels)

    def forward(self, x: torch.Tensor, context: Any) -> torch.Tensor:
        """x (B, C, H, W), context (B, T, cross_attention_dim) or an `IPAdapterContext` -> (B, C, H, W)."""
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear_projection:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C)
        if self.use_linear_projection:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear_projection:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        if not self.use_linear_projection:
            x = self.proj_out(x)
        return x + residual
