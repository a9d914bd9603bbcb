"""Textual inversion: new tokens in a tokenizer and their embedding rows in a text encoder (diffusers' semantics).

An embedding comes as a tensor (D,) or (n, D), as a one-key dict {token: tensor} (diffusers' format), or as an
A1111 dict with "name" and "string_to_param": {"*": tensor}. An (n, D) embedding with n > 1 is a multi-vector
token: `token`, `token_1`, ..., `token_{n-1}` are added, and prompts mentioning `token` are expanded to all of them
(`expand_multi_vector_tokens`, applied by `encode_prompt` as diffusers' `maybe_convert_prompt`). For SDXL files
with "clip_l"/"clip_g" keys, call once per encoder with `state_dict["clip_l"]` and `state_dict["clip_g"]`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

Embedding = torch.Tensor | dict[str, Any]


def _token_and_vectors(embedding: Embedding, token: str | None) -> tuple[str, torch.Tensor]:
    """(token, (n, D) vectors) from one embedding in any of the accepted formats."""
    if isinstance(embedding, torch.Tensor):
        if token is None:
            raise ValueError("A textual inversion given as a tensor needs its token: pass `token=...`.")
        loaded_token, vectors = token, embedding
    elif isinstance(embedding, dict) and len(embedding) == 1:
        loaded_token, vectors = next(iter(embedding.items()))
    elif isinstance(embedding, dict) and "string_to_param" in embedding:
        loaded_token, vectors = embedding.get("name", token), embedding["string_to_param"]["*"]
    else:
        keys = sorted(embedding) if isinstance(embedding, dict) else type(embedding).__name__
        raise ValueError(
            f"Cannot read a textual inversion from {keys}: expected a tensor, a one-key dict {{token: tensor}} or an "
            "A1111 dict with 'string_to_param'. For an SDXL file with 'clip_l' and 'clip_g', pass state_dict['clip_l'] "
            "with the first encoder and state_dict['clip_g'] with the second."
        )
    if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2):
        raise ValueError(f"The embedding of {loaded_token!r} must be a (D,) or (n, D) tensor, got {vectors!r}.")
    if token is not None and token != loaded_token:
        logger.info("The loaded token %r is replaced by the given token %r.", loaded_token, token)
    return token or loaded_token, vectors.reshape(-1, vectors.shape[-1])


def add_textual_inversion(tokenizer: Any, text_encoder: Any, embedding: Embedding, token: str | None = None) -> list[str]:
    """Add the token(s) of `embedding` to `tokenizer` and set their rows in `text_encoder`; returns the tokens."""
    token, vectors = _token_and_vectors(embedding, token)
    vocab = tokenizer.get_vocab()
    if token in vocab or f"{token}_1" in vocab:
        raise ValueError(
            f"Token {token!r} is already in the tokenizer's vocabulary: choose another token name, or load this "
            "embedding into a fresh pipeline."
        )
    width = text_encoder.get_input_embeddings().weight.shape[-1]
    if vectors.shape[-1] != width:
        raise ValueError(
            f"The embedding of {token!r} has width {vectors.shape[-1]}, but this text encoder's token embeddings have "
            f"width {width}: pass the embedding made for this encoder (clip_l: 768, clip_g: 1280 in SDXL)."
        )
    tokens = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
    table = text_encoder.resize_token_embeddings(len(tokenizer) + len(tokens))
    with torch.no_grad():
        for name, vector in zip(tokens, vectors):
            tokenizer.add_tokens(name)
            table.weight[tokenizer.convert_tokens_to_ids(name)] = vector.to(table.weight)
    logger.info("Loaded textual inversion %s.", tokens)
    return tokens


def expand_multi_vector_tokens(prompt: str, tokenizer: Any) -> str:
    """`token` -> `token token_1 ... token_{n-1}` for each multi-vector token in `prompt` (diffusers'
    `maybe_convert_prompt`); a prompt without added tokens comes back unchanged."""
    added = tokenizer.added_tokens_encoder
    for token in set(tokenizer.tokenize(prompt)):
        if token in added:
            replacement, i = token, 1
            while f"{token}_{i}" in added:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt
