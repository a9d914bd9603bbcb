"""Tiled and sliced VAE encode/decode: parity with diffusers' tiling on the same weights, and closeness to untiled.

The tiny VAE (scale factor 2) gets small tiles (16 pixels / 8 latents) so that tiling actually happens on small inputs.
"""

from __future__ import annotations

import dataclasses

import pytest
import reference
import torch

from sdxl.models.vae import AutoencoderKL, VAEConfig
from sdxl.models.vae_tiling import blend_h, blend_v, tiled

TILE_SAMPLE, TILE_LATENT = 16, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair():
    """(diffusers VAE, our VAE) with the same weights and the same small tile sizes, tiling off."""
    ref = reference.make_vae()
    ours = AutoencoderKL(VAEConfig.from_dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    for vae in (ref, ours):
        vae.tile_sample_min_size, vae.tile_latent_min_size = TILE_SAMPLE, TILE_LATENT
    return ref, ours


def _set(vae, tiling: bool, slicing: bool) -> None:
    vae.enable_tiling() if tiling else vae.disable_tiling()
    vae.enable_slicing() if slicing else vae.disable_slicing()


def rel_err(expected: torch.Tensor, actual: torch.Tensor) -> float:
    expected, actual = expected.double(), actual.double()
    return ((expected - actual).norm() / expected.norm()).item()


def latents(shape=(2, 4, 20, 26), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def images(shape=(2, 3, 40, 52), seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("tiling,slicing", [(True, False), (False, True), (True, True)])
def test_decode_matches_diffusers(pair, tiling, slicing):
    ref, ours = pair
    z = latents()
    try:
        _set(ref, tiling, slicing)
        _set(ours, tiling, slicing)
        with torch.no_grad():
            theirs = ref.decode(z).sample
            mine = ours.decode(z).sample
    finally:
        _set(ref, False, False)
        _set(ours, False, False)
    assert mine.shape == theirs.shape == (2, 3, 40, 52)
    assert rel_err(theirs, mine) < 1e-5
    if tiling:  # tiling really changed the output (so the parity above is about the tiled path)
        with torch.no_grad():
            assert rel_err(ref.decode(z).sample, theirs) > 1e-3


@pytest.mark.parametrize("tiling,slicing", [(True, False), (False, True), (True, True)])
def test_encode_matches_diffusers(pair, tiling, slicing):
    ref, ours = pair
    x = images()
    try:
        _set(ref, tiling, slicing)
        _set(ours, tiling, slicing)
        with torch.no_grad():
            theirs = ref.encode(x).latent_dist
            mine = ours.encode(x).latent_dist
    finally:
        _set(ref, False, False)
        _set(ours, False, False)
    assert mine.mean.shape == theirs.mean.shape == (2, 4, 20, 26)
    assert rel_err(theirs.mean, mine.mean) < 1e-5
    assert rel_err(theirs.std, mine.std) < 1e-5
    if tiling:
        with torch.no_grad():
            assert rel_err(ref.encode(x).latent_dist.mean, theirs.mean) > 1e-3


def test_public_tiled_methods_match_diffusers(pair):
    """`vae.tiled_decode(z).sample` / `vae.tiled_encode(x).latent_dist`, diffusers' public names, tile regardless."""
    ref, ours = pair
    z, x = latents((1, 4, 12, 12)), images((1, 3, 24, 24))
    with torch.no_grad():
        assert rel_err(ref.tiled_decode(z).sample, ours.tiled_decode(z).sample) < 1e-5
        assert rel_err(ref.tiled_decode(z, return_dict=False)[0], ours.tiled_decode(z, return_dict=False)[0]) < 1e-5
        assert rel_err(ref.tiled_encode(x).latent_dist.mean, ours.tiled_encode(x).latent_dist.mean) < 1e-5


def test_small_inputs_are_not_tiled(pair):
    """Inputs that fit in one tile take the untiled path: identical output with tiling on."""
    _, ours = pair
    z = latents((1, 4, TILE_LATENT, TILE_LATENT))
    with torch.no_grad():
        plain = ours.decode(z).sample
        ours.enable_tiling()
        try:
            tiled_out = ours.decode(z).sample
        finally:
            ours.disable_tiling()
    assert torch.equal(plain, tiled_out)


def test_blend_matches_diffusers(pair):
    ref, _ = pair
    a, b = torch.randn(1, 2, 6, 7), torch.randn(1, 2, 6, 7)
    for ours_fn, theirs_fn in ((blend_v, ref.blend_v), (blend_h, ref.blend_h)):
        expected = theirs_fn(a.clone(), b.clone(), 4)
        got = ours_fn(a.clone(), b.clone(), 4)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        # an extent larger than the tiles is clipped, as diffusers does
        torch.testing.assert_close(ours_fn(a.clone(), b.clone(), 99), theirs_fn(a.clone(), b.clone(), 99))


def test_tiling_matches_untiled_away_from_seams():
    """With a local decoder (no mid-block attention), a tiled decode matches the untiled one closely.

    GroupNorm statistics are per tile, so equality is approximate (about 8% relative error on this random tiny VAE,
    also in diffusers, whose tiling is the same); the seams themselves are blended. The tiled image must be far closer
    to the untiled one than the untiled images of two different latents are to each other.
    """
    torch.manual_seed(0)
    config = dataclasses.replace(
        VAEConfig.from_dict(reference.make_vae().config), mid_block_add_attention=False
    )
    vae = AutoencoderKL(config).eval()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 32
    z, other = latents((1, 4, 80, 80), seed=1), latents((1, 4, 80, 80), seed=2)
    with torch.no_grad():
        plain, plain_other = vae.decode(z).sample, vae.decode(other).sample
        vae.enable_tiling()
        tiled_out = vae.decode(z).sample
    assert tiled_out.shape == plain.shape
    # the interior of the first tile (away from its right/bottom seam band and the image border)
    interior = (slice(None), slice(None), slice(8, 40), slice(8, 40))
    err_interior = rel_err(plain[interior], tiled_out[interior])
    err_baseline = rel_err(plain, plain_other)
    assert err_interior < 0.1 * err_baseline, (err_interior, err_baseline)
    assert rel_err(plain, tiled_out) < 0.15 * err_baseline


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiled_decode_low_precision(pair, dtype):
    """fp16/bf16 weights: the tiled decode runs in that dtype and stays close to the fp32 tiled decode."""
    _, ours = pair
    low = AutoencoderKL(ours.config).eval()
    low.load_state_dict(ours.state_dict())
    low.to(dtype)
    low.tile_sample_min_size, low.tile_latent_min_size = TILE_SAMPLE, TILE_LATENT
    low.enable_tiling()
    z = latents((1, 4, 12, 12))
    with torch.no_grad():
        out = low.decode(z.to(dtype)).sample
        ref = ours.tiled_decode(z).sample
    assert out.dtype == dtype
    assert rel_err(ref, out.float()) < 0.05


def test_zero_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="tile stride"):
        tiled(lambda t: t, torch.zeros(1, 1, 4, 4), tile_in=1, tile_out=1, overlap_factor=0.25)
