"""State-dict key normalisation: every other spelling of a checkpoint's keys -> our (diffusers/hub) names.

Models never rename; a loader looks up the normaliser for a model family here (`registry.MODELS[...].keymap`)
and applies it before the strict key check. Each normaliser is a pure function `dict -> dict` that keeps the
tensors as they are (no copies).

Families:
  "clip_text": transformers CLIPTextModel / CLIPTextModelWithProjection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StateDict = dict[str, torch.Tensor]

CLIP_PREFIX = "text_model."
# Top-level keys of CLIPTextModelWithProjection that are not under `text_model.`.
CLIP_TOP_LEVEL = ("text_projection.",)
# Older transformers saved the position-id buffer; our models compute it in forward.
CLIP_DROPPED = ("text_model.embeddings.position_ids",)


def normalize_clip_text(sd: StateDict) -> StateDict:
    """Accept both CLIP text-encoder spellings and drop the stale position-id buffer.

    transformers >= 5.6 saves `CLIPTextModel` without the `text_model.` prefix (`embeddings.token_embedding.weight`);
    the official SDXL files and older transformers have `text_model.embeddings.token_embedding.weight`.
    """
    out: StateDict = {}
    for key, value in sd.items():
        if not key.startswith(CLIP_PREFIX) and not key.startswith(CLIP_TOP_LEVEL):
            key = CLIP_PREFIX + key
        if key in CLIP_DROPPED:
            continue
        out[key] = value
    return out


KEYMAPS: dict[str, Callable[[StateDict], StateDict]] = {
    "clip_text": normalize_clip_text,
}


def normalize_keys(family: str | None, sd: StateDict) -> StateDict:
    """Apply the normaliser of `family` (None: keys are already canonical)."""
    if family is None:
        return sd
    if family not in KEYMAPS:
        raise ValueError(f"no key map named {family!r}; known: {', '.join(sorted(KEYMAPS))}.")
    return KEYMAPS[family](sd)
