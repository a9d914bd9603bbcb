"""IP-Adapter inside the UNet: image projection layers (CLIP image features -> image tokens) and the decoupled
cross-attention processor that attends to those tokens beside the text.

Ye et al. 2023, "IP-Adapter" (arXiv:2308.06721). Module names, keys and arithmetic follow diffusers 0.42.1
(`models/embeddings.py` ImageProjection ... MultiIPAdapterImageProjection, `models/attention_processor.py`
IPAdapterAttnProcessor2_0, `image_processor.py` IPAdapterMaskProcessor.downsample), so the same weights give the
same outputs. Reading the original IP-Adapter files is `loading/ip_adapter.py`'s job.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, FeedForward
from .attention_processor import IPAdapterContext, merge_heads, split_heads
from .layers import attention


class ImageProjection(nn.Module):
    """IP-Adapter (base): one CLIP image embedding (B, D_img) -> `num_image_text_embeds` tokens (B, n, D)."""

    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 32):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(x.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))  # (B, n, D)


class IPAdapterFullImageProjection(nn.Module):
    """IP-Adapter Full Face: every CLIP hidden state (B, 257, D_img) -> (B, 257, D) by a GELU MLP and LayerNorm."""

    def __init__(self, image_embed_dim: int = 1024, cross_attention_dim: int = 1024):
        super().__init__()
        self.ff = FeedForward(image_embed_dim, cross_attention_dim, mult=1, activation="gelu")
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.ff(image_embeds))


class IPAdapterFaceIDImageProjection(nn.Module):
    """IP-Adapter FaceID: a face-ID embedding (B, D_id) -> `num_tokens` tokens (B, n, D)."""

    def __init__(
        self, image_embed_dim: int = 1024, cross_attention_dim: int = 1024, mult: int = 1, num_tokens: int = 1
    ):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.ff = FeedForward(image_embed_dim, cross_attention_dim * num_tokens, mult=mult, activation="gelu")
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.ff(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class IPAdapterPlusImageProjectionBlock(nn.Module):
    """One resampler layer: the latent queries attend to [image features; latents], then a GELU MLP; residuals."""

    def __init__(self, embed_dims: int = 768, dim_head: int = 64, heads: int = 16, ffn_ratio: float = 4):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_dims)
        self.ln1 = nn.LayerNorm(embed_dims)
        self.attn = Attention(embed_dims, heads, dim_head, out_bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(embed_dims),
            FeedForward(embed_dims, embed_dims, mult=ffn_ratio, activation="gelu", bias=False),
        )

    def forward(self, x: torch.Tensor, latents: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) image features, latents (B, Q, C) -> (B, Q, C)."""
        latents = self.ln1(latents)
        context = torch.cat([self.ln0(x), latents], dim=-2)  # (B, L + Q, C)
        latents = self.attn(latents, context) + residual
        return self.ff(latents) + latents


class IPAdapterPlusImageProjection(nn.Module):
    """IP-Adapter Plus: a perceiver resampler from CLIP hidden states (B, L, D_img) to `num_queries` tokens."""

    def __init__(
        self,
        embed_dims: int = 768,
        output_dims: int = 1024,
        hidden_dims: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 16,
        num_queries: int = 8,
        ffn_ratio: float = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dims) / hidden_dims**0.5)
        self.proj_in = nn.Linear(embed_dims, hidden_dims)
        self.proj_out = nn.Linear(hidden_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList(
            [IPAdapterPlusImageProjectionBlock(hidden_dims, dim_head, heads, ffn_ratio) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.size(0), 1, 1)  # (B, Q, hidden)
        x = self.proj_in(x)
        for block in self.layers:
            latents = block(x, latents, latents)
        return self.norm_out(self.proj_out(latents))


class IPAdapterFaceIDPlusImageProjection(nn.Module):
    """IP-Adapter FaceID Plus: face-ID tokens refined by a resampler over CLIP hidden states (`clip_embeds`, set by
    the caller before the forward, as diffusers does)."""

    def __init__(
        self,
        embed_dims: int = 768,
        output_dims: int = 768,
        hidden_dims: int = 1280,
        id_embeddings_dim: int = 512,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 16,
        num_tokens: int = 4,
        num_queries: int = 8,
        ffn_ratio: float = 4,
        ffproj_ratio: int = 2,
    ):
        super().__init__()
        self.num_tokens = num_tokens
        self.embed_dim = embed_dims
        self.clip_embeds: torch.Tensor | None = None
        self.shortcut = False
        self.shortcut_scale = 1.0
        self.proj = FeedForward(id_embeddings_dim, embed_dims * num_tokens, mult=ffproj_ratio, activation="gelu")
        self.norm = nn.LayerNorm(embed_dims)
        self.proj_in = nn.Linear(hidden_dims, embed_dims)
        self.proj_out = nn.Linear(embed_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList(
            [IPAdapterPlusImageProjectionBlock(embed_dims, dim_head, heads, ffn_ratio) for _ in range(depth)]
        )

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        if self.clip_embeds is None:
            raise ValueError(
                "IP-Adapter FaceID Plus needs the CLIP image features: set "
                "`unet.encoder_hid_proj.image_projection_layers[i].clip_embeds` before the call (as in diffusers)."
            )
        id_embeds = self.norm(
            self.proj(id_embeds.to(self.clip_embeds.dtype)).reshape(-1, self.num_tokens, self.embed_dim)
        )
        latents = id_embeds
        clip_embeds = self.proj_in(self.clip_embeds)
        x = clip_embeds.reshape(-1, clip_embeds.shape[2], clip_embeds.shape[3])
        for block in self.layers:
            latents = block(x, latents, latents)
        out = self.norm_out(self.proj_out(latents))
        return id_embeds + self.shortcut_scale * out if self.shortcut else out


class MultiIPAdapterImageProjection(nn.Module):
    """One projection layer per loaded IP-Adapter: a list of (B, n_images, ...) embeddings -> a list of
    (B, n_images, tokens, D) image tokens."""

    def __init__(self, IPAdapterImageProjectionLayers: list[nn.Module]):
        super().__init__()
        self.image_projection_layers = nn.ModuleList(IPAdapterImageProjectionLayers)

    @property
    def num_ip_adapters(self) -> int:
        return len(self.image_projection_layers)

    def forward(self, image_embeds: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(image_embeds, torch.Tensor):  # diffusers' deprecated single-tensor form
            image_embeds = [image_embeds.unsqueeze(1)]
        if len(image_embeds) != len(self.image_projection_layers):
            raise ValueError(
                f"{len(image_embeds)} IP-Adapter image embeddings were given for {len(self.image_projection_layers)} "
                "loaded IP-Adapters: pass one (B, n_images, ...) tensor per adapter."
            )
        out = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            b, n = embeds.shape[:2]
            tokens = layer(embeds.reshape((b * n,) + embeds.shape[2:]))  # (B*n, tokens, D)
            out.append(tokens.reshape((b, n) + tokens.shape[1:]))  # (B, n, tokens, D)
        return out


# ---- decoupled cross-attention -------------------------------------------------------------------------------------


def downsample_mask(mask: torch.Tensor, batch_size: int, num_queries: int, value_embed_dim: int) -> torch.Tensor:
    """An IP-Adapter mask (1, H, W) -> (B, num_queries, value_embed_dim) weights over the layer's tokens (bicubic to
    the token grid; diffusers' `IPAdapterMaskProcessor.downsample`, its aspect-ratio fallbacks included)."""
    ratio = mask.shape[2] / mask.shape[1]
    mask_h = int(math.sqrt(num_queries / ratio))
    mask_h = int(mask_h) + int((num_queries % int(mask_h)) != 0)
    mask_w = num_queries // mask_h
    out = F.interpolate(mask.unsqueeze(0), size=(mask_h, mask_w), mode="bicubic").squeeze(0)
    if out.shape[0] < batch_size:
        out = out.repeat(batch_size, 1, 1)
    out = out.view(out.shape[0], -1)
    if mask_h * mask_w != num_queries:
        warnings.warn(
            "The aspect ratio of the IP-Adapter mask does not match the output image's; resize the mask to the "
            "image's aspect ratio.",
            UserWarning,
            stacklevel=2,
        )
        out = F.pad(out, (0, num_queries - out.shape[1]), value=0.0)[:, :num_queries]
    return out.view(out.shape[0], out.shape[1], 1).repeat(1, 1, value_embed_dim)


def _check_masks(masks: Any, scales: list[Any], image_tokens: list[torch.Tensor]) -> list[torch.Tensor | None]:
    if masks is None:
        return [None] * len(scales)
    if isinstance(masks, torch.Tensor):  # diffusers' older form: (n_adapters, 1, H, W)
        masks = list(masks.unsqueeze(1))
    if not len(masks) == len(scales) == len(image_tokens):
        raise ValueError(
            f"{len(masks)} ip_adapter_masks were given for {len(scales)} IP-Adapters and {len(image_tokens)} image "
            "embeddings: pass one mask (or None) per adapter."
        )
    for index, (mask, scale, tokens) in enumerate(zip(masks, scales, image_tokens)):
        if mask is None:
            continue
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
            raise ValueError(
                "Each IP-Adapter mask must be a tensor of shape (1, num_images_for_adapter, height, width) "
                "(IPAdapterMaskProcessor.preprocess makes one)."
            )
        if mask.shape[1] != tokens.shape[1]:
            raise ValueError(f"IP-Adapter {index}: {mask.shape[1]} masks for {tokens.shape[1]} images.")
        if isinstance(scale, list) and len(scale) != mask.shape[1]:
            raise ValueError(f"IP-Adapter {index}: {mask.shape[1]} masks for {len(scale)} scales.")
    return list(masks)


def _is_off(scale: Any) -> bool:
    return all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0


class IPAdapterAttnProcessor2_0(nn.Module):
    """Decoupled cross-attention: text attention plus, per adapter, `scale` x attention of the same queries over
    that adapter's image tokens through its own `to_k_ip`/`to_v_ip` (keys `processor.to_k_ip.{i}.weight`)."""

    def __init__(
        self, hidden_size: int, cross_attention_dim: int | None = None, num_tokens: Any = (4,), scale: Any = 1.0
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = list(num_tokens) if isinstance(num_tokens, (tuple, list)) else [num_tokens]
        self.scale = scale if isinstance(scale, list) else [scale] * len(self.num_tokens)
        if len(self.scale) != len(self.num_tokens):
            raise ValueError(f"`scale` needs one entry per IP-Adapter ({len(self.num_tokens)}), got {self.scale!r}.")
        dim = cross_attention_dim or hidden_size
        self.to_k_ip = nn.ModuleList([nn.Linear(dim, hidden_size, bias=False) for _ in self.num_tokens])
        self.to_v_ip = nn.ModuleList([nn.Linear(dim, hidden_size, bias=False) for _ in self.num_tokens])

    def __call__(self, attn: Any, x: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        masks = None
        if isinstance(context, IPAdapterContext):
            text, image_tokens, masks = context
        elif isinstance(context, tuple):  # diffusers' (text, [image tokens]) form
            text, image_tokens = context
        else:
            raise ValueError(  # noqa: TRY004 (a missing input, not a wrong type)
                "An IP-Adapter layer needs image embeddings: pass `ip_adapter_image` or `ip_adapter_image_embeds` to "
                "the pipeline (or `added_cond_kwargs={'image_embeds': ...}` to the UNet), or unload_ip_adapter()."
            )
        heads = attn.heads
        q = split_heads(attn.to_q(x), heads)  # (B, h, Lq, d)
        k, v = split_heads(attn.to_k(text), heads), split_heads(attn.to_v(text), heads)
        out = merge_heads(attention(q, k, v))  # (B, Lq, h*d)
        masks = _check_masks(masks, self.scale, image_tokens)
        for tokens, scale, to_k, to_v, mask in zip(image_tokens, self.scale, self.to_k_ip, self.to_v_ip, masks):
            if _is_off(scale):
                continue
            if mask is None:
                # every image's tokens in one sequence: (B, n_images * tokens, D)
                ip = attention(q, split_heads(to_k(tokens), heads), split_heads(to_v(tokens), heads))
                out = out + scale * merge_heads(ip).to(q.dtype)
                continue
            scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
            for i in range(mask.shape[1]):
                image = tokens[:, i]  # (B, tokens, D)
                ip = merge_heads(attention(q, split_heads(to_k(image), heads), split_heads(to_v(image), heads)))
                weights = downsample_mask(mask[:, i], q.shape[0], ip.shape[1], ip.shape[2])
                out = out + scales[i] * (ip * weights.to(dtype=q.dtype, device=q.device))
        return attn.to_out[1](attn.to_out[0](out))
