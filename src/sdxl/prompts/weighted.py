"""Weighted and long-prompt embeddings for one CLIP encoder, with compel 2.5's formulas (SDXL settings).

compel's SDXL setting (`returned_embeddings_type=PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED`, `requires_pooled=[False,
True]`, default `DownweightMode.MASK` and `SplitLongTextMode.SENTENCES`), read from `compel/embeddings_provider.py`:

1. Token layout. Each fragment is tokenized on its own and the ids concatenated, each weight repeated per token.
   Truncated: the first 75 ids in one `[BOS] ids [EOS] [PAD]...` window of 77. Long (`truncate=False`): windows of
   at most 75 ids, each split after the last "." in the first 75 ids, else the last "," "." ";" ":", else the last
   word end, else at 75; every window wrapped in BOS/EOS and padded to 77, windows concatenated along the sequence.
2. Per window: `z` = penultimate hidden state with an all-ones attention mask; if any weight != 1,
   `z' = empty + (z - empty) * w` where `empty` is the encoding of `[BOS][EOS][PAD]*75`, keeping `z` where w == 1.
3. Down-weighting: for each fragment with weight w < 1, the same is computed with that fragment's tokens masked
   out of the attention (window BOS/EOS kept), and the results blended with weights `[1, tan((1 - w) * pi / 2), ...]`
   normalised to sum 1 (w clamped to >= 1e-5).
4. The pooled vector (compel's `get_pooled_embeddings`) is the plain encoding of the text truncated to 77 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

Fragments = list[tuple[str, float]]

_SENTENCE_ENDS = (".</w>",)
_PHRASE_ENDS = (".</w>", ",</w>", ";</w>", ":</w>")


@dataclass(frozen=True)
class TokenLayout:
    """Token ids in 77-long windows, a weight per position, and each fragment's (first, last) position or None."""

    ids: torch.Tensor  # (L,) long, L = 77 * windows
    weights: torch.Tensor  # (L,) float32
    ranges: list[tuple[int, int] | None]


def _split_point(tokenizer: Any, ids: list[int], limit: int) -> int:
    """How many of `ids` go in the next window: compel's SENTENCES mode with its fallbacks."""
    if len(ids) <= limit:
        return limit
    head = tokenizer.convert_ids_to_tokens(ids)[:limit]
    for accept in (
        lambda t: t in _SENTENCE_ENDS,
        lambda t: t in _PHRASE_ENDS,
        lambda t: t.endswith("</w>"),
    ):
        for index in range(len(head) - 1, -1, -1):
            if accept(head[index]):
                return index + 1
    return limit


def layout_tokens(tokenizer: Any, fragments: Fragments, truncate: bool) -> TokenLayout:
    """Tokenize the fragments one by one and lay them out in BOS/EOS-wrapped windows (step 1 above)."""
    if not fragments:
        fragments = [("", 1.0)]
    window = tokenizer.model_max_length
    room = window - 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = tokenizer([text for text, _ in fragments], truncation=truncate, padding="do_not_pad")["input_ids"]
    ids: list[int] = []
    weights: list[float] = []
    owner: list[int] = []  # fragment index of each content id
    for index, (seq, (_, weight)) in enumerate(zip(encoded, fragments)):
        seq = seq[1:] if seq and seq[0] == bos else seq
        seq = seq[:-1] if seq and seq[-1] == eos else seq
        ids += seq
        weights += [float(weight)] * len(seq)
        owner += [index] * len(seq)

    out_ids: list[int] = []
    out_weights: list[float] = []
    position: list[int] = []  # where each content id lands
    start = 0
    while True:
        take = room if truncate else _split_point(tokenizer, ids[start:], room)
        chunk = ids[start : start + take]
        base = len(out_ids) + 1
        position += range(base, base + len(chunk))
        pad_length = window - len(chunk) - 2
        out_ids += [bos, *chunk, eos] + [pad] * pad_length
        out_weights += [1.0, *weights[start : start + take], 1.0] + [1.0] * pad_length
        start += len(chunk)
        if truncate or start >= len(ids):
            break

    ranges: list[tuple[int, int] | None] = [None] * len(fragments)
    for index in range(len(fragments)):
        placed = [position[k] for k in range(len(position)) if owner[k] == index]
        if not placed:
            continue
        last = placed[-1]
        if truncate and owner.count(index) > len(placed):
            last = window - 1  # compel's range of a cut fragment runs to the EOS
        ranges[index] = (placed[0], last)
    return TokenLayout(
        ids=torch.tensor(out_ids, dtype=torch.long),
        weights=torch.tensor(out_weights, dtype=torch.float32),
        ranges=ranges,
    )


def _hidden(text_encoder: Any, ids: torch.Tensor, mask: torch.Tensor | None, layer: int) -> torch.Tensor:
    device = text_encoder.device
    mask = None if mask is None else mask.to(device)
    return text_encoder(ids.to(device), mask, output_hidden_states=True).hidden_states[layer]


def empty_embedding(tokenizer: Any, text_encoder: Any, clip_skip: int | None = None) -> torch.Tensor:
    """(1, 77, D) encoding of `[BOS][EOS][PAD]...` (compel's `empty_z`; also what compel("") gives)."""
    window = tokenizer.model_max_length
    ids = [tokenizer.bos_token_id, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (window - 2)
    return _hidden(text_encoder, torch.tensor([ids]), None, _layer(clip_skip))


def _layer(clip_skip: int | None) -> int:
    # SDXL reads the penultimate layer; clip_skip counts further back from there (as diffusers)
    return -2 if clip_skip is None else -(clip_skip + 2)


def _weighted_windows(
    text_encoder: Any, layout: TokenLayout, mask: torch.Tensor, window: int, empty: torch.Tensor, layer: int
) -> torch.Tensor:
    """(1, L, D): each window encoded under `mask`, weights applied against the empty prompt (step 2)."""
    out = []
    for start in range(0, layout.ids.shape[0], window):
        ids = layout.ids[start : start + window][None]
        z = _hidden(text_encoder, ids, mask[start : start + window][None], layer)
        w = layout.weights[start : start + window].to(z.device)[:, None].expand(z.shape)  # (1, 77, D)
        keep = w == 1
        if not bool(keep.all()):
            z = torch.where(keep, z, empty + (z - empty) * w)
        out.append(z)
    return torch.cat(out, dim=1)  # (1, L, D)


def weighted_embedding(
    tokenizer: Any,
    text_encoder: Any,
    fragments: Fragments,
    truncate: bool = True,
    clip_skip: int | None = None,
    empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1, 77 * windows, D) per-token embedding of weighted fragments, as compel's EmbeddingsProvider (steps 1-3).

    `empty`: this encoder's `empty_embedding` (same clip_skip), when the caller has it already.
    """
    window = tokenizer.model_max_length
    layer = _layer(clip_skip)
    layout = layout_tokens(tokenizer, fragments, truncate)
    empty = empty_embedding(tokenizer, text_encoder, clip_skip) if empty is None else empty
    ones = torch.ones_like(layout.ids)
    embeddings = [_weighted_windows(text_encoder, layout, ones, window, empty, layer)]
    blend = [1.0]
    for (_, weight), span in zip(fragments, layout.ranges):
        if weight >= 1 or span is None:
            continue
        mask = ones.clone()
        mask[span[0] : span[1] + 1] = 0
        if not truncate:
            mask[0::window] = 1  # keep every window's BOS and EOS
            mask[window - 1 :: window] = 1
        embeddings.append(_weighted_windows(text_encoder, layout, mask, window, empty, layer))
        blend.append(math.tan((1.0 - max(1e-5, weight)) * math.pi / 2))
    stacked = torch.stack(embeddings, dim=1)  # (1, n, L, D)
    factors = torch.tensor(blend, dtype=stacked.dtype, device=stacked.device)
    factors = factors / torch.sum(factors)
    blended = torch.sum(stacked * factors.reshape(-1, 1, 1), dim=1)  # (1, L, D)
    return blended.to(text_encoder.dtype)


def pad_to_same_length(embeds: list[torch.Tensor], empties: list[torch.Tensor]) -> list[torch.Tensor]:
    """Append each tensor's empty-prompt window (1, 77, D) until all have the longest sequence length."""
    longest = max(e.shape[1] for e in embeds)
    out = []
    for embed, empty in zip(embeds, empties):
        missing = longest - embed.shape[1]
        if missing % empty.shape[1]:
            raise ValueError(
                f"Cannot pad an embedding of {embed.shape[1]} tokens to {longest} with {empty.shape[1]}-token windows: "
                "pass embeddings whose lengths are multiples of 77."
            )
        reps = missing // empty.shape[1]
        pad = empty.to(embed.dtype).expand(embed.shape[0], -1, -1).repeat(1, reps, 1)
        out.append(torch.cat([embed, pad], dim=1) if reps else embed)
    return out
