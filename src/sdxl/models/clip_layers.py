"""The transformer layers both CLIP towers share (text: causal; vision: bidirectional), and transformers' weight
initialisation for freshly built CLIP models.

Module and parameter names are transformers 5.23's (`models/clip/modeling_clip.py`: `CLIPAttention`, `CLIPMLP`,
`CLIPEncoderLayer`, `CLIPEncoder`) so checkpoints load with `strict=True`; each module is built in transformers' order,
so that `init_like_transformers` after the same `torch.manual_seed` gives the same random weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sdxl.models.layers import ConfigMapping

ACTIVATIONS = ("quick_gelu", "gelu")
# config.json keys that do not change inference: metadata, dropout/initialisation, and transformers'
# generic PretrainedConfig/generation keys that older transformers versions wrote into every config.
IGNORED_KEYS = frozenset(
    {
        "_name_or_path", "_commit_hash", "_attn_implementation", "architectures", "transformers_version",
        "torch_dtype", "dtype", "attention_dropout", "dropout",
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


class CLIPConfigMixin(ConfigMapping):
    """config.json reading/writing shared by the CLIP text and vision configs (transformers' keys, `model_type`)."""

    MODEL_TYPE: ClassVar[str]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Read a transformers config.json dict (missing keys take transformers' defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        model_type = d.get("model_type", cls.MODEL_TYPE)
        if model_type != cls.MODEL_TYPE:
            raise ValueError(
                f"model_type={model_type!r} is not a {cls.__name__} config (expected {cls.MODEL_TYPE!r})."
            )
        kwargs = {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = value
            elif key not in IGNORED_KEYS and key != "model_type" and value not in (None, False):
                raise ValueError(
                    f"Unknown {cls.__name__} key {key!r} = {value!r}; known keys: {sorted(names)} "
                    "(remove it, or set it to null if it has no effect)."
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A config.json-compatible dict (transformers' keys)."""
        return {**dataclasses.asdict(self), "model_type": self.MODEL_TYPE}


def clip_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """Softmax attention (B, heads, T, d) -> (B, heads, T, d). `mask` is an additive (B, 1, T, T) float mask that
    already holds the causal part; without one, `causal` selects the causal or the full pattern. Kept apart from
    `layers.attention`, which takes no mask."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> additive (B, 1, T, T) mask: 0 where a query may attend (key <= query and key
    not padding), the dtype's minimum elsewhere (transformers' eager mask)."""
    t = attention_mask.shape[-1]
    pos = torch.arange(t, device=attention_mask.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T): key <= query
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, T)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class CLIPAttention(nn.Module):
    def __init__(self, config: Any, causal: bool = True):
        super().__init__()
        self.heads = config.num_attention_heads
        self.causal = causal
        dim = config.hidden_size
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = clip_attention(q, k, v, mask, self.causal)  # (B, heads, T, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class CLIPMLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.quick = config.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h)
        return self.fc2(h)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: Any, causal: bool = True):
        super().__init__()
        self.self_attn = CLIPAttention(config, causal)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: Any, causal: bool = True):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config, causal) for _ in range(config.num_hidden_layers)])

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(B, T, C) -> (B, T, C), and (input, every layer's output) when `output_hidden_states`."""
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask)
            if hidden_states is not None:
                hidden_states.append(x)
        return x, tuple(hidden_states) if hidden_states is not None else None


# ---- transformers' initialisation ---------------------------------------------------------------------------------


def _normal(weight: torch.Tensor | None, std: float) -> None:
    if weight is not None:
        nn.init.normal_(weight, mean=0.0, std=std)


def _generic_init(module: nn.Module, std: float) -> None:
    """`PreTrainedModel._init_weights` for the layer types CLIP uses."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        _normal(module.weight, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        _normal(module.weight, std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_like_transformers(root: nn.Module, config: Any, specific: Any) -> None:
    """Re-initialise the freshly built `root` as transformers' `post_init` does: children before parents, each
    module first by its layer type (normal with `initializer_range`, LayerNorms to ones/zeros), then by
    `specific(module, factor)` (CLIP's scaled normals). Same order, same random draws as transformers. A model on
    the meta device (the loaders build there) is left alone: its weights come from a checkpoint."""
    first = next(root.parameters(), None)
    if first is None or first.is_meta:
        return
    std = getattr(config, "initializer_range", 0.02) or 0.02
    factor = getattr(config, "initializer_factor", 1.0)

    def visit(module: nn.Module) -> None:
        for child in module.children():
            visit(child)
        _generic_init(module, std)
        specific(module, factor)

    visit(root)


def clip_layer_init(module: nn.Module, config: Any, factor: float) -> None:
    """CLIP's own scaled normals for the shared layers (transformers' `CLIPPreTrainedModel._init_weights`)."""
    if isinstance(module, CLIPAttention):
        width = module.q_proj.in_features
        in_std = width**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor
        for proj in (module.q_proj, module.k_proj, module.v_proj):
            _normal(proj.weight, in_std)
        _normal(module.out_proj.weight, width**-0.5 * factor)
    elif isinstance(module, CLIPMLP):
        width = module.fc1.in_features
        _normal(module.fc1.weight, (2 * width) ** -0.5 * factor)
        _normal(module.fc2.weight, width**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor)
