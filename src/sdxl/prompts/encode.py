"""Prompt encoding for SDXL: two CLIP text encoders, penultimate hidden states, pooled vector from encoder 2.

Behaviour follows diffusers' `StableDiffusionXLPipeline.encode_prompt` (0.42):
- the context is `hidden_states[-2]` of each encoder (`[-(clip_skip + 2)]` with clip_skip; negatives ignore
  clip_skip), concatenated on the feature axis: (B, 77, 768 + 1280) for SDXL;
- the pooled vector is the 2-D first output (`text_embeds`) of the encoder that has one (text_encoder_2);
- `prompt_2` / `negative_prompt_2` fall back to `prompt` / `negative_prompt` when None or "";
- with `force_zeros_for_empty_prompt` and no `negative_prompt`, the negatives are zeros, not the encoded "";
- a refiner has no text_encoder/tokenizer: only encoder 2 is used, and `prompt_2` is never read.

Opt-in extensions (not in diffusers): `prompt_syntax` ("compel" or "a1111") weights parts of the prompt, and
`long_prompts=True` encodes prompts past 77 tokens in BOS/EOS-wrapped windows, with compel's formulas
(`sdxl.prompts.weighted`); positives and negatives are then padded to one length with the empty prompt's windows.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sdxl.prompts.embeddings import expand_multi_vector_tokens
from sdxl.prompts.weighted import empty_embedding, pad_to_same_length, weighted_embedding
from sdxl.prompts.weighting import parser_for

logger = logging.getLogger(__name__)

Prompt = str | list[str] | None


def prompt_batch_size(prompt: Prompt, prompt_embeds: torch.Tensor | None) -> int:
    """Number of prompts: 1 for a string, the list length, or the batch of `prompt_embeds`."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def _check_text(name: str, value: Prompt, batch_size: int | None, error: type[Exception] = ValueError) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise error(f"`{name}` must be a string or a non-empty list of strings, but got {value!r}.")
    if batch_size is not None and len(value) != batch_size:
        raise ValueError(
            f"`{name}` has {len(value)} entries but the batch has {batch_size} prompts: pass one {name} per prompt "
            "(or a single string for all)."
        )


def check_prompt_inputs(
    prompt: Prompt = None,
    prompt_2: Prompt = None,
    negative_prompt: Prompt = None,
    negative_prompt_2: Prompt = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
) -> None:
    """Raise ValueError/TypeError for every prompt combination diffusers rejects (and the list-length mismatches
    that diffusers only catches as a failed concatenation)."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
    if prompt_2 is not None and prompt_embeds is not None:
        raise ValueError("Pass either `prompt_2` or `prompt_embeds`, not both.")
    if prompt is None and prompt_embeds is None:
        raise ValueError("Pass `prompt` (a string or a list of strings) or `prompt_embeds`; both are missing.")
    _check_text("prompt", prompt, None)
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    _check_text("prompt_2", prompt_2, batch_size)

    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
    if negative_prompt_2 is not None and negative_prompt_embeds is not None:
        raise ValueError("Pass either `negative_prompt_2` or `negative_prompt_embeds`, not both.")
    # diffusers raises TypeError when negative_prompt is not of prompt's (str or list) type
    _check_text("negative_prompt", negative_prompt, batch_size, error=TypeError)
    _check_text("negative_prompt_2", negative_prompt_2, batch_size, error=TypeError)

    if (
        prompt_embeds is not None
        and negative_prompt_embeds is not None
        and prompt_embeds.shape != negative_prompt_embeds.shape
    ):
        raise ValueError(
            "`prompt_embeds` and `negative_prompt_embeds` must have the same shape, but got "
            f"{tuple(prompt_embeds.shape)} and {tuple(negative_prompt_embeds.shape)}."
        )
    if prompt_embeds is not None and pooled_prompt_embeds is None:
        raise ValueError(
            "`prompt_embeds` were given without `pooled_prompt_embeds`: pass both, made by the same text encoders."
        )
    if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
        raise ValueError(
            "`negative_prompt_embeds` were given without `negative_pooled_prompt_embeds`: pass both, made by the same "
            "text encoders."
        )
    if prompt_embeds is not None and pooled_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
        raise ValueError(
            f"`pooled_prompt_embeds` has batch {pooled_prompt_embeds.shape[0]} but `prompt_embeds` has batch "
            f"{prompt_embeds.shape[0]}: pass one pooled vector per prompt."
        )


def _encode(
    tokenizer: Any, text_encoder: Any, texts: list[str], max_length: int | None, clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, max_length, hidden) penultimate-or-clip-skipped hidden state, and the pooled (B, proj) output if any.

    `max_length` None means the tokenizer's own `model_max_length` (77).
    """
    max_length = tokenizer.model_max_length if max_length is None else max_length
    texts = [expand_multi_vector_tokens(t, tokenizer) for t in texts]  # multi-vector textual inversions
    ids = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] > ids.shape[-1]:
        logger.warning(
            "A prompt is longer than the %d tokens CLIP reads; %d tokens at its end were dropped.",
            max_length,
            untruncated.shape[-1] - ids.shape[-1],
        )
    output = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    pooled = output[0] if output[0].ndim == 2 else None
    # SDXL always reads from the penultimate layer, so clip_skip counts from there
    hidden = output.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)]
    return hidden, pooled


def _encode_pair(
    encoders: list[tuple[Any, Any]], texts: list[list[str]], max_length: int | None, clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden_states, pooled = [], None
    for (tokenizer, text_encoder), batch in zip(encoders, texts):
        hidden, pooled_here = _encode(tokenizer, text_encoder, batch, max_length, clip_skip)
        hidden_states.append(hidden)
        pooled = pooled_here if pooled is None else pooled
    # (B, L, 768) + (B, L, 1280) -> (B, L, 2048)
    return torch.cat(hidden_states, dim=-1), pooled


def _pooled_text(text: str, syntax: str | None) -> str:
    """The text the pooled vector reads: compel reads the raw prompt (syntax included); A1111 the text without it."""
    if syntax == "a1111":
        return "".join(fragment for fragment, _ in parser_for(syntax)(text))
    return text


def _empty_row(encoders: list[tuple[Any, Any]], clip_skip: int | None) -> torch.Tensor:
    """(1, 77, sum D): the empty prompt's window, every encoder's features concatenated."""
    return torch.cat([empty_embedding(t, e, clip_skip) for t, e in encoders], dim=-1)


def _encode_weighted(
    encoders: list[tuple[Any, Any]], texts: list[list[str]], syntax: str | None, truncate: bool, clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(B, 77 * windows, sum D) weighted/long context, (B, P) pooled, and the (1, 77, sum D) empty window.

    Rows of the batch (and the encoders' outputs, when prompt_2 differs in length) are padded to one length with
    the empty prompt's windows.
    """
    parse = parser_for(syntax)
    texts = texts[: len(encoders)]  # a refiner (one encoder) reads `prompt` only, as diffusers
    empties = [empty_embedding(t, e, clip_skip) for t, e in encoders]
    rows = []
    for b in range(len(texts[0])):
        per_encoder = [
            weighted_embedding(t, e, parse(expand_multi_vector_tokens(batch[b], t)), truncate, clip_skip, empty)
            for (t, e), batch, empty in zip(encoders, texts, empties)
        ]
        rows.append(torch.cat(pad_to_same_length(per_encoder, empties), dim=-1))  # (1, L, sum D)
    empty = torch.cat(empties, dim=-1)
    context = torch.cat(pad_to_same_length(rows, [empty] * len(rows)), dim=0)
    # the pooled vector comes from the encoder with a projection (text_encoder_2, always last)
    tokenizer_2, text_encoder_2 = encoders[-1]
    _, pooled = _encode(tokenizer_2, text_encoder_2, [_pooled_text(t, syntax) for t in texts[-1]], None, None)
    return context, pooled, empty


def _as_batch(text: str | list[str], batch_size: int) -> list[str]:
    return [text] * batch_size if isinstance(text, str) else text


def encode_prompt(
    *,
    tokenizer: Any,
    text_encoder: Any,
    tokenizer_2: Any,
    text_encoder_2: Any,
    prompt: Prompt,
    prompt_2: Prompt = None,
    device: torch.device | str | None = None,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: Prompt = None,
    negative_prompt_2: Prompt = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
    clip_skip: int | None = None,
    force_zeros_for_empty_prompt: bool = True,
    dtype: torch.dtype | None = None,
    prompt_syntax: str | None = None,
    long_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds).

    `prompt_syntax` ("compel", "a1111" or None) and `long_prompts` switch to the weighted encoder
    (`sdxl.prompts.weighted`); with both at their defaults the result is diffusers' exactly.

    Each is repeated `num_images_per_prompt` times per prompt (rows of one prompt are adjacent), cast to
    text_encoder_2's dtype (or `dtype`, the UNet's, when there is no text_encoder_2) and moved to `device`.
    Negatives are None without classifier-free guidance. Inputs are assumed checked by `check_prompt_inputs`.
    """
    if isinstance(prompt, str):
        prompt = [prompt]
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    encoders = [(tokenizer_2, text_encoder_2)]
    if tokenizer is not None and text_encoder is not None:
        encoders.insert(0, (tokenizer, text_encoder))

    weighted = prompt_syntax is not None or long_prompts
    parser_for(prompt_syntax)  # a bad syntax name fails before any encoding
    if prompt_embeds is None:
        texts = [prompt, _as_batch(prompt_2 or prompt, batch_size)]
        if weighted:
            prompt_embeds, pooled, _ = _encode_weighted(encoders, texts, prompt_syntax, not long_prompts, clip_skip)
        else:
            prompt_embeds, pooled = _encode_pair(encoders, texts, None, clip_skip)
        pooled_prompt_embeds = pooled if pooled_prompt_embeds is None else pooled_prompt_embeds

    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if negative_prompt is None and force_zeros_for_empty_prompt:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        else:
            negative_prompt = negative_prompt or ""
            negative_prompt_2 = negative_prompt_2 or negative_prompt
            texts = [_as_batch(negative_prompt, batch_size), _as_batch(negative_prompt_2, batch_size)]
            if weighted:
                negative_prompt_embeds, pooled, empty = _encode_weighted(
                    encoders, texts, prompt_syntax, not long_prompts, clip_skip=None
                )
                if prompt_embeds.shape[1] != negative_prompt_embeds.shape[1]:
                    # one sequence length for both sides of guidance: pad the shorter with the empty prompt
                    prompt_embeds, negative_prompt_embeds = pad_to_same_length(
                        [prompt_embeds, negative_prompt_embeds], [_empty_row(encoders, clip_skip), empty]
                    )
            else:
                negative_prompt_embeds, pooled = _encode_pair(encoders, texts, prompt_embeds.shape[1], clip_skip=None)
            if negative_pooled_prompt_embeds is None:
                negative_pooled_prompt_embeds = pooled

    dtype = text_encoder_2.dtype if text_encoder_2 is not None else dtype

    def finish(x: torch.Tensor) -> torch.Tensor:
        # (B, ...) -> (B * num_images_per_prompt, ...), each prompt's copies adjacent
        return x.to(dtype=dtype, device=device).repeat_interleave(num_images_per_prompt, dim=0)

    prompt_embeds = finish(prompt_embeds)
    pooled_prompt_embeds = pooled_prompt_embeds.to(device=device).repeat_interleave(num_images_per_prompt, dim=0)
    if do_classifier_free_guidance:
        negative_prompt_embeds = finish(negative_prompt_embeds)
        negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.to(device=device).repeat_interleave(
            num_images_per_prompt, dim=0
        )
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
