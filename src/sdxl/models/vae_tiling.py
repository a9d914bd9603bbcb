"""Tiled VAE encode/decode: overlapping tiles run one at a time, blended linearly across each seam.

Memory of the decoder's activations then depends on the tile size, not the image size (a 2048x2048 decode fits
where the untiled one would not). The tiling follows diffusers 0.42.1 `AutoencoderKL.tiled_decode` / `_tiled_encode`
(https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/autoencoders/autoencoder_kl.py#L254-L403):
tiles start every `tile * (1 - overlap)` input pixels, each tile's first `blend` output rows/columns are blended with
its upper/left neighbour (already blended, in raster order), and each tile keeps its top-left `tile - blend` outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


def _weights(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - y/n, y/n) for y = 0..n-1, computed in float64 as diffusers' Python floats, then cast to at least fp32."""
    ramp = torch.arange(n, dtype=torch.float64) / n
    dtype = torch.promote_types(like.dtype, torch.float32)
    return (1 - ramp).to(like.device, dtype), ramp.to(like.device, dtype)


def blend_v(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
    """Blend the bottom rows of tile `a` into the top rows of tile `b` (in place on `b`, which is returned)."""
    n = min(a.shape[2], b.shape[2], blend_extent)
    if n > 0:
        wa, wb = (w.view(1, 1, n, 1) for w in _weights(n, b))
        b[:, :, :n, :] = a[:, :, -n:, :] * wa + b[:, :, :n, :] * wb
    return b


def blend_h(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
    """Blend the right columns of tile `a` into the left columns of tile `b` (in place on `b`, which is returned)."""
    n = min(a.shape[3], b.shape[3], blend_extent)
    if n > 0:
        wa, wb = (w.view(1, 1, 1, n) for w in _weights(n, b))
        b[:, :, :, :n] = a[:, :, :, -n:] * wa + b[:, :, :, :n] * wb
    return b


def tiled(fn: TileFn, x: torch.Tensor, tile_in: int, tile_out: int, overlap_factor: float) -> torch.Tensor:
    """Apply `fn` (input tile (B, C, <=tile_in, <=tile_in) -> output tile at the output resolution) over `x`.

    `tile_in`/`tile_out` are the tile sizes at the input and output resolutions (e.g. 64 latents -> 512 pixels for a
    decode, the reverse for an encode). Returns the stitched (B, C_out, H_out, W_out) tensor.
    """
    stride = int(tile_in * (1 - overlap_factor))
    blend_extent = int(tile_out * overlap_factor)
    row_limit = tile_out - blend_extent
    if stride <= 0:
        raise ValueError(
            f"VAE tiling needs a tile stride of at least 1, but tile size {tile_in} with overlap {overlap_factor} "
            "gives 0: use a larger tile size or a smaller tile_overlap_factor."
        )
    rows: list[list[torch.Tensor]] = []
    for i in range(0, x.shape[2], stride):
        rows.append([fn(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], stride)])
    result_rows = []
    for i, row in enumerate(rows):
        kept = []
        for j, tile in enumerate(row):
            # blend with the tile above and the tile to the left (both already blended), keep the top-left part
            if i > 0:
                tile = blend_v(rows[i - 1][j], tile, blend_extent)
            if j > 0:
                tile = blend_h(row[j - 1], tile, blend_extent)
            kept.append(tile[:, :, :row_limit, :row_limit])
        result_rows.append(torch.cat(kept, dim=3))  # (B, C, <=row_limit, W_out)
    return torch.cat(result_rows, dim=2)  # (B, C, H_out, W_out)


def sliced(fn: TileFn, x: torch.Tensor) -> torch.Tensor:
    """Apply `fn` to one batch item at a time and concatenate (lower peak memory for batches)."""
    return torch.cat([fn(item) for item in x.split(1)])
