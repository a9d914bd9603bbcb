"""How an `Attention` layer computes, swappable per layer as in diffusers: the processors and the switches models
share (`attn_processors`, `set_attn_processor`, `set_default_attn_processor`, `fuse_qkv_projections`).

- `AttnProcessor2_0` (the default): PyTorch SDPA through `layers.attention`.
- `AttnProcessor`: the classic softmax(QK^T / sqrt(d)) V in plain matrix products (diffusers' tests select it with
  `set_default_attn_processor()`; same values up to float rounding).
- `FusedAttnProcessor2_0`: one matrix product for q, k and v (self-attention) or k and v (cross-attention), after
  `fuse_qkv_projections()`; the fused weights are non-persistent buffers, so state dicts keep diffusers' keys.
- `IPAdapterAttnProcessor2_0` (in `ip_adapter.py`): decoupled cross-attention over image tokens.

diffusers 0.42.1 `models/attention_processor.py` is the reference (class names, `attn_processors` keys
"down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", set/restore semantics).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .layers import attention
from .lora import adds_adapter_output
from .sdpa_kernels import AttentionKernels


class IPAdapterContext(NamedTuple):
    """The cross-attention context when IP-Adapters are active: text tokens (B, T, D), one projected image-token
    tensor per adapter ((B, n_images, tokens, D)), and optional per-adapter masks ((1, n_images, H, W) or None)."""

    text: torch.Tensor
    image_embeds: list[torch.Tensor]
    masks: list[torch.Tensor | None] | None = None


def text_context(context: Any) -> Any:
    """The text part of a context (processors without image tokens read only that)."""
    if isinstance(context, IPAdapterContext):
        return context.text
    if isinstance(context, tuple):  # diffusers' (text, image_embeds) form
        return context[0]
    return context


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b = x.shape[0]
    return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class AttnProcessor2_0:
    """Scaled dot-product attention through PyTorch SDPA (the default)."""

    def __call__(self, attn: Any, x: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        context = text_context(context)
        context = x if context is None else context
        q, k, v = (split_heads(p, attn.heads) for p in (attn.to_q(x), attn.to_k(context), attn.to_v(context)))
        return attn.to_out[1](attn.to_out[0](merge_heads(self.attend(q, k, v, attn.kernels))))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernels: AttentionKernels | None = None
    ) -> torch.Tensor:
        return attention(q, k, v, kernels)  # (B, h, Lq, d)


class AttnProcessor(AttnProcessor2_0):
    """Classic attention: softmax(q k^T / sqrt(d)) v in explicit matrix products (diffusers' `AttnProcessor`)."""

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernels: AttentionKernels | None = None
    ) -> torch.Tensor:
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, h, Lq, Lk)
        return scores.softmax(dim=-1).to(v.dtype) @ v


class FusedAttnProcessor2_0(AttnProcessor2_0):
    """SDPA with the projections fused by `Attention.fuse_projections()`: one matmul for q|k|v (self-attention)
    or k|v (cross-attention)."""

    def __call__(self, attn: Any, x: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        if not attn.fused_projections:
            raise RuntimeError("FusedAttnProcessor2_0 needs fused projections: call fuse_qkv_projections() first.")
        context = text_context(context)
        if context is None and attn.to_qkv is not None and not _adapted(attn.to_q, attn.to_k, attn.to_v):
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        elif context is not None and attn.to_kv is not None and not _adapted(attn.to_k, attn.to_v):
            q = attn.to_q(x)
            k, v = attn.to_kv(context).chunk(2, dim=-1)
        else:  # unfused LoRA adapters on the projections, or a self-attention layer given a context (IP-Adapter Plus)
            context = x if context is None else context
            q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        q, k, v = (split_heads(t, attn.heads) for t in (q, k, v))
        return attn.to_out[1](attn.to_out[0](merge_heads(attention(q, k, v, attn.kernels))))


def _adapted(*layers: nn.Module) -> bool:
    """Whether any of `layers` adds unfused LoRA outputs (then its weight alone, which the fused matrix holds, is not
    its function)."""
    return any(adds_adapter_output(layer) for layer in layers)


# Processors `set_default_attn_processor` may replace (diffusers' CROSS_ATTENTION_PROCESSORS, for what sdxl has).
REPLACEABLE_PROCESSORS = frozenset(
    {"AttnProcessor", "AttnProcessor2_0", "FusedAttnProcessor2_0", "IPAdapterAttnProcessor2_0"}
)


class AttentionProcessorsMixin:
    """The processor switches of a model whose attention layers are `attention.Attention` (UNet and VAE)."""

    original_attn_processors: dict[str, Any] | None = None

    def _attention_layers(self) -> dict[str, nn.Module]:
        from .attention import Attention  # attention.py imports this module

        # named_modules is diffusers' order (registration order, depth first): IP-Adapter weight ids depend on it
        return {name: m for name, m in self.named_modules() if isinstance(m, Attention)}  # type: ignore[attr-defined]

    @property
    def attn_processors(self) -> dict[str, Any]:
        """{"<layer path>.processor": processor} for every attention layer, in diffusers' order."""
        return {f"{name}.processor": layer.processor for name, layer in self._attention_layers().items()}

    def set_attn_processor(self, processor: Any) -> None:
        """One processor for every attention layer, or a dict keyed like `attn_processors` (every key)."""
        layers = self._attention_layers()
        if isinstance(processor, dict):
            missing = sorted(f"{n}.processor" for n in layers if f"{n}.processor" not in processor)
            if len(processor) != len(layers) or missing:
                raise ValueError(
                    f"A dict of {len(processor)} processors was passed, but the model has {len(layers)} attention "
                    f"layers; missing keys such as {missing[:3]}. Pass one processor per key of `attn_processors`."
                )
            for name, layer in layers.items():
                layer.set_processor(processor[f"{name}.processor"])
        else:
            for layer in layers.values():
                layer.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Every layer back to classic attention (`AttnProcessor`), as diffusers: loaded IP-Adapter processors go
        too."""
        names = {type(p).__name__ for p in self.attn_processors.values()}
        unknown = names - REPLACEABLE_PROCESSORS
        if unknown:
            raise ValueError(f"set_default_attn_processor cannot replace the processors {sorted(unknown)}.")
        self.set_attn_processor(AttnProcessor())

    def fuse_qkv_projections(self) -> None:
        """Fuse the q/k/v (self-attention) or k/v (cross-attention) projections into one matmul each; the outputs
        stay the same up to float rounding. `unfuse_qkv_projections()` restores the processors."""
        if self.original_attn_processors is None:  # fusing twice keeps the processors from before the first time
            self.original_attn_processors = self.attn_processors
        for layer in self._attention_layers().values():
            layer.fuse_projections()
        self.set_attn_processor(FusedAttnProcessor2_0())

    def set_attention_kernels(self, kernels: AttentionKernels | None) -> None:
        """Every attention layer picks its SDPA kernel per shape from `kernels` (None: PyTorch's own choice)."""
        for layer in self._attention_layers().values():
            layer.kernels = kernels

    def unfuse_qkv_projections(self) -> None:
        """Back to separate projections and the processors from before `fuse_qkv_projections()`."""
        if self.original_attn_processors is None:
            return
        self.set_attn_processor(self.original_attn_processors)
        self.original_attn_processors = None
        for layer in self._attention_layers().values():
            layer.unfuse_projections()
