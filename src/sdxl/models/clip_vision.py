"""The CLIP image encoder IP-Adapters read: `CLIPVisionModelWithProjection` (ViT with a class token, pre- and
post-LayerNorm, a projection of the pooled token), as transformers 5.23's `models/clip/modeling_clip.py`, with its
key names (`vision_model.embeddings.patch_embedding.weight`, `vision_model.pre_layrnorm.*`, `visual_projection.weight`)
so the h94/IP-Adapter image encoders load with `strict=True`. Fresh models get transformers' random weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sdxl.models.base import ConfiguredModel
from sdxl.models.clip_layers import ACTIVATIONS, CLIPConfigMixin, CLIPEncoder, clip_layer_init, init_like_transformers
from sdxl.models.layers import ModelOutput, build_config


@dataclass(frozen=True)
class CLIPVisionConfig(CLIPConfigMixin):
    """CLIP vision transformer hyper-parameters; field names and defaults are transformers' `CLIPVisionConfig`."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    MODEL_TYPE: ClassVar[str] = "clip_vision_model"

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {list(ACTIVATIONS)}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}.")

    @classmethod
    def vit_h(cls) -> CLIPVisionConfig:
        """h94/IP-Adapter `models/image_encoder` (OpenCLIP ViT-H/14), used by the SDXL "vit-h" adapters."""
        return cls(
            hidden_size=1280,
            intermediate_size=5120,
            projection_dim=1024,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            hidden_act="gelu",
        )

    @classmethod
    def vit_bigg(cls) -> CLIPVisionConfig:
        """h94/IP-Adapter `sdxl_models/image_encoder` (OpenCLIP ViT-bigG/14), used by ip-adapter_sdxl.safetensors."""
        return cls(
            hidden_size=1664,
            intermediate_size=8192,
            projection_dim=1280,
            num_hidden_layers=48,
            num_attention_heads=16,
            patch_size=14,
            hidden_act="gelu",
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPVisionConfig:
        """Read a transformers config.json dict (a full `CLIPConfig` is read through its `vision_config`)."""
        if d.get("model_type") == "clip" and "vision_config" in d:
            d = d["vision_config"]
        return super().from_dict(d)


@dataclass
class CLIPVisionModelOutput(ModelOutput):
    """`CLIPVisionModelWithProjection` output: `.image_embeds` (also `out[0]`), `.last_hidden_state`,
    `.hidden_states`."""

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class CLIPVisionEmbeddings(nn.Module):
    """Class token + 2-D patches (a stride-`patch_size` conv) + learned positions: (B, 3, S, S) -> (B, 1 + N, C)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.image_size = config.image_size
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding((config.image_size // config.patch_size) ** 2 + 1, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"Input image size ({h}*{w}) doesn't match the model ({self.image_size}*{self.image_size}): "
                "preprocess images with the pipeline's feature_extractor (CLIPImageProcessor)."
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, C, h, w)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.class_embedding.expand(b, 1, -1), patches], dim=1)  # (B, 1 + N, C)
        return x + self.position_embedding.weight[None]


class CLIPVisionTransformer(nn.Module):
    """embeddings -> pre-LayerNorm -> bidirectional encoder; pooled = post-LayerNorm of the class token.

    Named `vision_model` inside `CLIPVisionModelWithProjection` (transformers 5 calls this class CLIPVisionModel)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # (sic: transformers' key)
        self.encoder = CLIPEncoder(config, causal=False)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(last_hidden_state (B, 1 + N, C), pooled (B, C), hidden states: pre-normed embeddings + each layer's)."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        last, hidden_states = self.encoder(x, None, output_hidden_states)
        return last, self.post_layernorm(last[:, 0, :]), hidden_states


def _vision_init(module: nn.Module, config: CLIPVisionConfig, factor: float) -> None:
    clip_layer_init(module, config, factor)
    if isinstance(module, CLIPVisionEmbeddings):
        nn.init.normal_(module.class_embedding, std=config.hidden_size**-0.5 * factor)
        nn.init.normal_(module.patch_embedding.weight, std=config.initializer_range * factor)
        nn.init.normal_(module.position_embedding.weight, std=config.initializer_range * factor)


class CLIPVisionModelWithProjection(ConfiguredModel):
    """CLIP image encoder: `.image_embeds` (projected pooled class token, what IP-Adapter reads) and
    `.hidden_states` (IP-Adapter Plus reads `hidden_states[-2]`).

    Built from a `CLIPVisionConfig`, a config dict, a transformers `CLIPVisionConfig` or keyword arguments."""

    def __init__(self, config: Any = None, **kwargs: Any):
        super().__init__()
        self.config = build_config(CLIPVisionConfig, config, kwargs, "CLIPVisionModelWithProjection")
        self.vision_model = CLIPVisionTransformer(self.config)
        init_like_transformers(self.vision_model, self.config, lambda m, f: _vision_init(m, self.config, f))
        self.visual_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        std = self.config.hidden_size**-0.5 * self.config.initializer_factor
        init_like_transformers(self.visual_projection, self.config, lambda m, f: nn.init.normal_(m.weight, std=std))

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> CLIPVisionModelOutput | tuple:
        """pixel_values (B, 3, image_size, image_size), normalised as CLIPImageProcessor does."""
        if output_attentions:
            raise ValueError("output_attentions=True is not supported (attention runs in a fused SDPA kernel).")
        last, pooled, hidden = self.vision_model(pixel_values, bool(output_hidden_states))
        out = CLIPVisionModelOutput(
            image_embeds=self.visual_projection(pooled), last_hidden_state=last, hidden_states=hidden
        )
        return out if return_dict is None or return_dict else out.to_tuple()
