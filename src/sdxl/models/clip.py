"""The two CLIP text encoders of SDXL: CLIP ViT-L/14's (`text_encoder`) and OpenCLIP ViT-bigG/14's (`text_encoder_2`).

Pre-norm transformer with a causal mask, learned positions and a final LayerNorm, as transformers 5.23's
`CLIPTextModel` / `CLIPTextModelWithProjection` (models/clip/modeling_clip.py), with the official hub key names
(`text_model.…`, plus `text_projection.weight`) so that checkpoints load with `strict=True`.
https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/modeling_clip.py
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sdxl.models.base import ConfiguredModel
from sdxl.models.clip_layers import (
    ACTIVATIONS,
    CLIPConfigMixin,
    CLIPEncoder,
    causal_padding_mask,
    clip_layer_init,
    init_like_transformers,
)
from sdxl.models.layers import ModelOutput, build_config


@dataclass(frozen=True)
class CLIPTextConfig(CLIPConfigMixin):
    """CLIP text transformer hyper-parameters; field names and defaults are transformers' `CLIPTextConfig`.

    `CLIPTextConfig(hidden_size=32, ...)` is built as transformers' is (the form diffusers' tests use); it also reads
    as a dict. `initializer_range`/`initializer_factor` only shape the random weights of a freshly built model.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 49406
    # 2 (the official SDXL configs) selects transformers' legacy pooling: the position of the largest id.
    eos_token_id: int = 49407
    MODEL_TYPE: ClassVar[str] = "clip_text_model"
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self):
        if type(self.eos_token_id) is not int:  # transformers allows a list; the pooling here needs one id
            raise ValueError(f"eos_token_id={self.eos_token_id!r} is not supported; it must be one int.")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {list(ACTIVATIONS)}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}."
            )

    @classmethod
    def clip_l(cls) -> CLIPTextConfig:
        """SDXL `text_encoder` (CLIP ViT-L/14), as the official text_encoder/config.json."""
        return cls(
            hidden_size=768,
            intermediate_size=3072,
            projection_dim=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )

    @classmethod
    def clip_g(cls) -> CLIPTextConfig:
        """SDXL `text_encoder_2` (OpenCLIP ViT-bigG/14), as the official text_encoder_2/config.json."""
        return cls(
            hidden_size=1280,
            intermediate_size=5120,
            projection_dim=1280,
            num_hidden_layers=32,
            num_attention_heads=20,
            hidden_act="gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )


# ---- outputs ------------------------------------------------------------------------------------------------------


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """`CLIPTextModel` output; `out[0]` is last_hidden_state, as transformers' class of the same name."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPTextModelOutput(ModelOutput):
    """`CLIPTextModelWithProjection` output; `out[0]` is text_embeds (diffusers reads the pooled vector there)."""

    text_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ---- layers -------------------------------------------------------------------------------------------------------


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        t = input_ids.shape[-1]
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)[None]  # (1, T)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


@torch.no_grad()
def _text_init(module: nn.Module, config: CLIPTextConfig, factor: float) -> None:
    clip_layer_init(module, config, factor)
    if isinstance(module, CLIPTextEmbeddings):
        nn.init.normal_(module.token_embedding.weight, std=factor * 0.02)
        nn.init.normal_(module.position_embedding.weight, std=factor * 0.02)


class CLIPTextTransformer(nn.Module):
    """embeddings -> causal encoder layers -> final LayerNorm; the `text_model` of both encoders."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id
        self.max_positions = config.max_position_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(last_hidden_state (B, T, C), pooled (B, C), hidden_states: embeddings + every layer's output, or None)."""
        if input_ids is None:
            raise ValueError("input_ids is required (token ids of shape (B, T)).")
        t = input_ids.shape[-1]
        if t > self.max_positions:
            raise ValueError(
                f"Sequence length {t} exceeds max_position_embeddings={self.max_positions}; "
                "truncate the prompt (tokenizer(..., truncation=True)) or encode it in chunks."
            )
        input_ids = input_ids.reshape(-1, t)  # (B, T)
        x = self.embeddings(input_ids, position_ids)
        mask = None
        if attention_mask is not None:
            mask = causal_padding_mask(attention_mask.reshape(-1, t), x.dtype)
        x, hidden_states = self.encoder(x, mask, output_hidden_states)
        last = self.final_layer_norm(x)

        # Pooled vector at the end-of-text token. Configs with eos_token_id == 2 (the official SDXL ones, written
        # before transformers PR #24773) take the first position of the largest id; the others the first eos.
        ids = input_ids.to(device=last.device, dtype=torch.int)
        if self.eos_token_id == 2:
            index = ids.argmax(dim=-1)
        else:
            index = (ids == self.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), index]  # (B, C)
        return last, pooled, hidden_states


class _CLIPTextBase(ConfiguredModel):
    """What both encoders share: config, `text_model`, input-embedding access and resizing."""

    def __init__(self, config: Any = None, **kwargs: Any):
        super().__init__()
        config = build_config(CLIPTextConfig, config, kwargs, type(self).__name__)
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        # a fresh model gets transformers' random weights (the same draws after the same torch.manual_seed)
        init_like_transformers(self.text_model, config, lambda m, factor: _text_init(m, config, factor))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if not isinstance(value, nn.Embedding) or value.embedding_dim != self.config.hidden_size:
            raise ValueError(
                f"Input embeddings must be an nn.Embedding of width {self.config.hidden_size}, got {value}."
            )
        self.text_model.embeddings.token_embedding = value
        self.config = dataclasses.replace(self.config, vocab_size=value.num_embeddings)

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Grow or shrink the token embedding to `new_num_tokens` rows (textual inversion adds tokens).

        Kept rows are copied; new rows start at the mean of the old ones (transformers samples them around that
        mean; callers overwrite them anyway). Returns the new embedding.
        """
        old = self.get_input_embeddings()
        if not isinstance(new_num_tokens, int) or new_num_tokens <= 0:
            raise ValueError(f"new_num_tokens must be a positive int, got {new_num_tokens!r}.")
        if new_num_tokens == old.num_embeddings:
            return old
        new = nn.Embedding(new_num_tokens, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        keep = min(new_num_tokens, old.num_embeddings)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
            if new_num_tokens > keep:
                new.weight[keep:] = old.weight.float().mean(dim=0).to(old.weight.dtype)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        return new

    @staticmethod
    def _check_options(output_attentions: bool | None) -> None:
        if output_attentions:
            raise ValueError("output_attentions=True is not supported (attention runs in a fused SDPA kernel).")


class CLIPTextModel(_CLIPTextBase):
    """SDXL's first text encoder: `.last_hidden_state`, `.pooler_output`, `.hidden_states`."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        self._check_options(output_attentions)
        last, pooled, hidden = self.text_model(input_ids, attention_mask, position_ids, bool(output_hidden_states))
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden)
        return out if return_dict is None or return_dict else out.to_tuple()


class CLIPTextModelWithProjection(_CLIPTextBase):
    """SDXL's second text encoder: `.text_embeds` (projected pooled vector), `.last_hidden_state`, `.hidden_states`."""

    def __init__(self, config: Any = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.text_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        # transformers' post_init: the Linear's own init, then CLIP's scaled normal at the model level
        std = self.config.hidden_size**-0.5 * self.config.initializer_factor
        init_like_transformers(self.text_projection, self.config, lambda m, f: nn.init.normal_(m.weight, std=std))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> CLIPTextModelOutput | tuple:
        self._check_options(output_attentions)
        last, pooled, hidden = self.text_model(input_ids, attention_mask, position_ids, bool(output_hidden_states))
        out = CLIPTextModelOutput(
            text_embeds=self.text_projection(pooled), last_hidden_state=last, hidden_states=hidden
        )
        return out if return_dict is None or return_dict else out.to_tuple()
