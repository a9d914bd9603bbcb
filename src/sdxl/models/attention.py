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
from .sdpa_kernels import AttentionKernels


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
        self.to_qkv: nn.Module | None = None  # set by fuse_projections (self-attention)
        self.to_kv: nn.Module | None = None  # set by fuse_projections (cross-attention)
        self.kernels: AttentionKernels | None = None  # SDPA kernel choice per shape (pipe.optimize())

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
        """One projection for to_q|to_k|to_v (self-attention, `self.to_qkv`) or to_k|to_v (cross-attention,
        `self.to_kv`), diffusers' names. The fused matrix holds the weights and the separate projections become views
        of its rows, so fusing costs no memory and in-place weight changes (LoRA fusing) reach both. Its tensors are
        non-persistent buffers: state dicts keep diffusers' keys. (A later `.to()` converts the two separately: same
        values, two copies.)"""
        if self.fused_projections:
            return
        layers = [self.to_k, self.to_v] if self.is_cross_attention else [self.to_q, self.to_k, self.to_v]
        fused = FusedLinear(
            torch.cat([p.weight for p in layers]),
            torch.cat([p.bias for p in layers]) if layers[0].bias is not None else None,
        )
        sizes = [p.out_features for p in layers]
        for layer, rows in zip(layers, fused.weight.split(sizes)):
            layer.weight = nn.Parameter(rows, requires_grad=layer.weight.requires_grad)
        if fused.bias is not None:
            for layer, rows in zip(layers, fused.bias.split(sizes)):
                layer.bias = nn.Parameter(rows, requires_grad=layer.bias.requires_grad)
        if self.is_cross_attention:
            self.to_kv = fused
        else:
            self.to_qkv = fused
        self.fused_projections = True

    @torch.no_grad()
    def unfuse_projections(self) -> None:
        """Drop the fused projection; the separate projections get their own copies of their rows back."""
        if not self.fused_projections:
            return
        for layer in (self.to_q, self.to_k, self.to_v):
            if isinstance(layer, nn.Linear):  # an fp8 UNet's projections are no longer nn.Linear: left as they are
                layer.weight = nn.Parameter(layer.weight.clone(), requires_grad=layer.weight.requires_grad)
                if layer.bias is not None:
                    layer.bias = nn.Parameter(layer.bias.clone(), requires_grad=layer.bias.requires_grad)
        self.to_qkv = self.to_kv = None
        self.fused_projections = False


class FusedLinear(nn.Module):
    """The fused q|k|v or k|v projection: a Linear whose weight and bias are non-persistent buffers (they are
    concatenations of the separate projections' weights, which the state dict already holds)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


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
        # (B, C, H, W), in the input's memory format (channels_last stays channels_last: no copy)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(residual))
        if not self.use_linear_projection:
            x = self.proj_out(x)
        return x + residual


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when `x` (B, C, H, W) is stored so (see `pipe.optimize(channels_last=True)`), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
