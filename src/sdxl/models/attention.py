"""Attention, GEGLU feed-forward and the spatial transformer of SDXL's cross-attention blocks.

Module and parameter names are diffusers' (0.42.1, `models/attention_processor.py` `Attention`,
`models/attention.py` `BasicTransformerBlock`/`FeedForward`, `models/transformers/transformer_2d.py`),
so a diffusers state dict loads with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import attention


class Attention(nn.Module):
    """Multi-head attention with to_q/to_k/to_v/to_out projections; self-attention when no context is given."""

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

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Lq, query_dim), context (B, Lk, cross_attention_dim) or None -> (B, Lq, query_dim)."""
        context = x if context is None else context
        b = x.shape[0]
        h, d = self.heads, self.dim_head
        q = self.to_q(x).view(b, -1, h, d).transpose(1, 2)  # (B, h, Lq, d)
        k = self.to_k(context).view(b, -1, h, d).transpose(1, 2)  # (B, h, Lk, d)
        v = self.to_v(context).view(b, -1, h, d).transpose(1, 2)  # (B, h, Lk, d)
        out = attention(q, k, v)  # (B, h, Lq, d)
        out = out.transpose(1, 2).reshape(b, -1, h * d)  # (B, Lq, h*d)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Gated GELU: one projection to 2*dim_out, split into value and gate; value * gelu(gate) (exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU(dim -> mult*dim) then Linear back to dim; keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        # nn.Identity stands where diffusers has Dropout, so the output linear keeps its key `net.2`.
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

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

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim), context (B, T, cross_attention_dim) -> (B, L, dim)."""
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
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
            self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, layer_norm_eps)
                for _ in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), context (B, T, cross_attention_dim) -> (B, C, H, W)."""
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
