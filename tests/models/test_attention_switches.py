"""The model switches diffusers has, against diffusers on the same weights: attention processors (classic and SDPA),
fused QKV projections, FreeU, layerwise casting."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import make_vae, unet_pair

import sdxl
from sdxl.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0


@pytest.fixture(scope="module")
def unets():
    return unet_pair("base")


def _run(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 7, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 64}
    with torch.no_grad():
        return unet(x, torch.tensor(321.0), context, added_cond_kwargs=added).sample


def _close(a, b, rel=1e-5):
    assert (a - b).abs().max() <= rel * b.abs().max(), (a - b).abs().max()


def test_processors_classic_and_sdpa_agree_with_diffusers(unets):
    theirs, ours = copy.deepcopy(unets[0]), copy.deepcopy(unets[1])
    assert all(isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values())
    sdpa = _run(ours)
    ours.set_default_attn_processor()  # diffusers' tests' setting (classic attention)
    assert {type(p) for p in ours.attn_processors.values()} == {AttnProcessor}
    _close(_run(ours), _run(theirs))
    _close(_run(ours), sdpa)
    names = list(ours.attn_processors)
    ours.set_attn_processor({name: AttnProcessor2_0() for name in names})
    assert torch.equal(_run(ours), sdpa)
    with pytest.raises(ValueError, match=f"A dict of 1 processors was passed, but the model has {len(names)}"):
        ours.set_attn_processor({names[0]: AttnProcessor()})
    with pytest.raises(TypeError, match="must be callable"):
        ours.set_attn_processor(3)


def test_fused_qkv_projections_match_diffusers(unets):
    theirs, ours = copy.deepcopy(unets[0]), copy.deepcopy(unets[1])
    before = _run(ours)
    keys = set(ours.state_dict())
    theirs.fuse_qkv_projections()
    ours.fuse_qkv_projections()
    assert {type(p) for p in ours.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert set(ours.state_dict()) == keys  # fused weights are not saved
    fused = _run(ours)
    _close(fused, _run(theirs))
    _close(fused, before)
    ours.unfuse_qkv_projections()
    assert torch.equal(_run(ours), before)
    assert all(isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values())


def test_vae_fused_projections_and_default_processor():
    theirs = make_vae()
    ours = sdxl.AutoencoderKL(**{k: v for k, v in theirs.config.items() if not k.startswith("_")}).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = theirs.encode(x).latent_dist.mean
        ours.fuse_qkv_projections()
        _close(ours.encode(x).latent_dist.mean, expected)
        ours.unfuse_qkv_projections()
        ours.set_default_attn_processor()
        _close(ours.encode(x).latent_dist.mean, expected)


def test_freeu_matches_diffusers(unets):
    theirs, ours = copy.deepcopy(unets[0]), copy.deepcopy(unets[1])
    plain = _run(ours)
    for unet in (theirs, ours):
        unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    freeu = _run(ours)
    _close(freeu, _run(theirs))
    assert (freeu - plain).abs().max() > 1e-3
    ours.disable_freeu()
    assert all(getattr(b, k) is None for b in ours.up_blocks for k in ("s1", "s2", "b1", "b2"))
    assert torch.equal(_run(ours), plain)


def test_layerwise_casting_matches_diffusers(unets):
    theirs, ours = copy.deepcopy(unets[0]), copy.deepcopy(unets[1])
    for unet in (theirs, ours):
        unet.to(torch.bfloat16)
        unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert ours.conv_in.weight.dtype == torch.float8_e4m3fn and ours.conv_norm_out.weight.dtype == torch.bfloat16
    stored = {k: v.dtype for k, v in ours.state_dict().items()}
    assert stored == {k: v.dtype for k, v in theirs.state_dict().items()}  # the same layers skipped
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 7, 64, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.rand(1, 6, generator=g) * 64}
    args = (x.bfloat16(), torch.tensor(321.0), context.bfloat16())
    added = {k: v.bfloat16() for k, v in added.items()}
    with torch.no_grad():
        mine, ref = ours(*args, added_cond_kwargs=added).sample, theirs(*args, added_cond_kwargs=added).sample
    assert mine.dtype == torch.bfloat16 and ours.conv_in.weight.dtype == torch.float8_e4m3fn
    _close(mine.float(), ref.float(), rel=2e-2)
    with pytest.raises(TypeError, match="storage_dtype must be a torch.dtype"):
        copy.deepcopy(unets[1]).enable_layerwise_casting(storage_dtype="fp8")
