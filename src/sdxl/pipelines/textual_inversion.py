"""`load_textual_inversion` on the SDXL pipelines, as diffusers' TextualInversionLoaderMixin has it (local
safetensors files, state dicts and tensors; nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sdxl.loading.weights import load_file
from sdxl.prompts.embeddings import add_textual_inversion


def _read_embedding(source: Any, weight_name: str | None) -> Any:
    """A tensor/dict as it is; a file or folder through the safetensors-only loader."""
    if isinstance(source, (torch.Tensor, dict)):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"A textual inversion must be a path, a state dict or a tensor, got {type(source).__name__}.")
    path = Path(source)
    if path.is_dir():
        path = path / (weight_name or "learned_embeds.safetensors")
    if not path.is_file():
        raise FileNotFoundError(
            f"No textual inversion file at {path}: pass a local .safetensors file or a folder holding "
            "learned_embeds.safetensors (hub ids are not downloaded here)."
        )
    return load_file(path)


class TextualInversionLoaderMixin:
    """Adds textual-inversion tokens to a pipeline's tokenizers and text encoders."""

    def load_textual_inversion(
        self,
        pretrained_model_name_or_path: Any,
        token: str | list[str] | None = None,
        tokenizer: Any = None,
        text_encoder: Any = None,
        weight_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Add textual-inversion token(s), as diffusers' method: a .safetensors file, a folder holding
        `learned_embeds.safetensors` (or `weight_name`), a state dict or a tensor, or a list of them with a list of
        tokens. `tokenizer`/`text_encoder` default to the first pair; for SDXL files call it twice, with
        `state_dict["clip_g"]` and `text_encoder_2`/`tokenizer_2`, then `state_dict["clip_l"]` and the first pair.
        Only safetensors files are read."""
        if kwargs:
            raise ValueError(f"load_textual_inversion: unsupported arguments {sorted(kwargs)} (files are local only).")
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        text_encoder = text_encoder if text_encoder is not None else self.text_encoder
        if tokenizer is None or text_encoder is None:
            raise ValueError(
                "load_textual_inversion needs a tokenizer and a text encoder: this pipeline has none by default, pass "
                "`tokenizer=` and `text_encoder=`."
            )
        sources = pretrained_model_name_or_path if isinstance(pretrained_model_name_or_path, list) else [
            pretrained_model_name_or_path
        ]
        tokens = token if isinstance(token, list) else [token] * len(sources)
        if len(tokens) != len(sources):
            raise ValueError(f"Got {len(sources)} embeddings but {len(tokens)} tokens: pass one token per embedding.")
        named = [t for t in tokens if t is not None]
        if len(set(named)) < len(named):
            raise ValueError(f"The tokens {tokens} contain duplicates: give each embedding its own token.")
        for source, name in zip(sources, tokens):
            add_textual_inversion(tokenizer, text_encoder, _read_embedding(source, weight_name), token=name)
