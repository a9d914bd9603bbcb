"""The two CLIP text encoders of SDXL: CLIP ViT-L/14's (`text_encoder`) and OpenCLIP ViT-bigG/14's (`text_encoder_2`).

Pre-norm transformer with a causal mask, learned positions and a final LayerNorm, as transformers 5.23's
`CLIPTextModel` / `CLIPTextModelWithProjection` (models/clip/modeling_clip.py), with the official hub key names
(`text_model.…`, plus `text_projection.weight`) so that checkpoints load with `strict=True`.
https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/modeling_clip.py
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdxl.models.base import ConfiguredModel
from sdxl.models.layers import ModelOutput

_ACTIVATIONS = ("quick_gelu", "gelu")
# config.json keys that do not change inference: metadata, dropout/initialisation, and transformers'
# generic PretrainedConfig/generation keys that older transformers versions wrote into every config.
_IGNORED_KEYS = frozenset(
    {
        "_name_or_path", "_commit_hash", "_attn_implementation", "architectures", "transformers_version",
        "torch_dtype", "dtype", "attention_dropout", "dropout", "initializer_factor", "initializer_range",
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16",
        "tie_word_embeddings", "is_decoder", "is_encoder_decoder", "add_cross_attention", "chunk_size_feed_forward",
        "id2label", "label2id", "problem_type", "prefix", "task_specific_params", "finetuning_task",
        "tokenizer_class", "pruned_heads", "cross_attention_hidden_size", "tf_legacy_loss", "use_cache",
        "num_beams", "num_beam_groups", "max_length", "min_length", "do_sample", "early_stopping", "temperature",
        "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
        "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "diversity_penalty",
        "sep_token_id", "decoder_start_token_id",
    }
)  # fmt: skip
_MODEL_TYPE = "clip_text_model"


@dataclass(frozen=True)
class CLIPTextConfig:
    """CLIP text transformer hyper-parameters; field names and defaults are transformers' `CLIPTextConfig`."""

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

    def __post_init__(self):
        if type(self.eos_token_id) is not int:  # transformers allows a list; the pooling here needs one id
            raise ValueError(f"eos_token_id={self.eos_token_id!r} is not supported; it must be one int.")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {list(_ACTIVATIONS)}.")
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPTextConfig:
        """Read a transformers config.json dict (missing keys take transformers' defaults)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        model_type = d.get("model_type", _MODEL_TYPE)
        if model_type != _MODEL_TYPE:
            raise ValueError(f"model_type={model_type!r} is not a CLIP text model config (expected {_MODEL_TYPE!r}).")
        kwargs = {}
        for key, value in d.items():
            if key in fields:
                kwargs[key] = value
            elif key in _IGNORED_KEYS or key == "model_type":
                continue
            elif value not in (None, False):
                raise ValueError(
                    f"Unknown CLIP text config key {key!r} = {value!r}; known keys: {sorted(fields)} "
                    "(remove it, or set it to null if it has no effect)."
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A config.json-compatible dict (transformers' keys)."""
        return {**dataclasses.asdict(self), "model_type": _MODEL_TYPE}


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


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Causal softmax attention (B, heads, T, d) -> (B, heads, T, d); `mask` is an additive (B, 1, T, T) float mask
    that already holds the causal part. Kept here because `layers.attention` takes no mask."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> additive (B, 1, T, T) mask: 0 where a query may attend (key <= query and key
    not padding), the dtype's minimum elsewhere (transformers' eager mask)."""
    t = attention_mask.shape[-1]
    pos = torch.arange(t, device=attention_mask.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T): key <= query
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, T)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


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


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        dim = config.hidden_size
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = _attention(q, k, v, mask)  # (B, heads, T, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.quick = config.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h)
        return self.fc2(h)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])


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
            mask = _causal_padding_mask(attention_mask.reshape(-1, t), x.dtype)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.encoder.layers:
            x = layer(x, mask)
            if hidden_states is not None:
                hidden_states.append(x)
        last = self.final_layer_norm(x)

        # Pooled vector at the end-of-text token. Configs with eos_token_id == 2 (the official SDXL ones, written
        # before transformers PR #24773) take the first position of the largest id; the others the first eos.
        ids = input_ids.to(device=last.device, dtype=torch.int)
        if self.eos_token_id == 2:
            index = ids.argmax(dim=-1)
        else:
            index = (ids == self.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), index]  # (B, C)
        return last, pooled, tuple(hidden_states) if hidden_states is not None else None


class _CLIPTextBase(ConfiguredModel):
    """What both encoders share: config, `text_model`, input-embedding access and resizing."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if not isinstance(config, CLIPTextConfig):
            raise TypeError(f"config must be a CLIPTextConfig, got {type(config).__name__}.")
        self.config = config
        self.text_model = CLIPTextTransformer(config)

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

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

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
