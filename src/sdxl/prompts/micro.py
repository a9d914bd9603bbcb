"""SDXL micro-conditioning: the `time_ids` the UNet adds to its timestep embedding (SDXL paper, section 2.2).

Two layouts exist, and the UNet's config says which one it was trained with:
- base:    [orig_h, orig_w, crop_top, crop_left, target_h, target_w]        (6 ids)
- refiner: [orig_h, orig_w, crop_top, crop_left, aesthetic_score]          (5 ids)
The UNet embeds each id with `addition_time_embed_dim` sinusoidal features and concatenates the pooled text vector
of text_encoder_2 in front, so `projection_class_embeddings_input_dim` must equal
`addition_time_embed_dim * n_ids + projection_dim`; diffusers' `_get_add_time_ids` checks the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"`{name}` must be a pair (height, width) / (top, left) of numbers, but got {value!r}.")
    return tuple(value)


def base_time_ids(
    original_size: Sequence[int], crops_coords_top_left: Sequence[int], target_size: Sequence[int]
) -> list[float]:
    """The base layout: original size, crop top-left, target size (each (h, w) / (top, left))."""
    return [
        *_pair("original_size", original_size),
        *_pair("crops_coords_top_left", crops_coords_top_left),
        *_pair("target_size", target_size),
    ]


def refiner_time_ids(
    original_size: Sequence[int], crops_coords_top_left: Sequence[int], aesthetic_score: float
) -> list[float]:
    """The refiner layout: original size, crop top-left, aesthetic score."""
    return [*_pair("original_size", original_size), *_pair("crops_coords_top_left", crops_coords_top_left), aesthetic_score]


def check_time_ids_length(n_ids: int, unet_config: Any, projection_dim: int) -> None:
    """Raise a ValueError when `n_ids` time ids plus the pooled vector do not fit the UNet's added embedding."""
    per_id = unet_config.addition_time_embed_dim
    expected = unet_config.projection_class_embeddings_input_dim
    passed = per_id * n_ids + projection_dim
    if passed == expected:
        return
    hint = "Check `unet.config.addition_time_embed_dim` and `text_encoder_2.config.projection_dim`."
    if expected - passed == per_id:
        hint = (
            "The UNet expects one id more: it was trained with the base layout (original size, crop, target size; "
            "6 ids), not the refiner's aesthetic-score layout; disable `requires_aesthetics_score` "
            "(pipe.register_to_config(requires_aesthetics_score=False))."
        )
    elif passed - expected == per_id:
        hint = (
            "The UNet expects one id fewer: it was trained with the refiner layout (original size, crop, aesthetic "
            "score; 5 ids); load it with StableDiffusionXLImg2ImgPipeline and `requires_aesthetics_score=True` "
            "(pipe.register_to_config(requires_aesthetics_score=True))."
        )
    raise ValueError(
        f"The UNet expects an added time embedding vector of length {expected} "
        f"(unet.config.projection_class_embeddings_input_dim), but {n_ids} time ids x {per_id} + pooled "
        f"projection_dim {projection_dim} = {passed}. {hint}"
    )


def time_ids_tensor(ids: list[float], *, unet_config: Any, projection_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, n_ids) tensor in `dtype` (the prompt embeddings' dtype, as diffusers), after the length check."""
    check_time_ids_length(len(ids), unet_config, projection_dim)
    return torch.tensor([ids], dtype=dtype)
