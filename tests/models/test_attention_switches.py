"""The model switches diffusers has, against diffusers on the same weights: attention processors (classic and SDPA),
fused QKV projections, FreeU, layerwise casting."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import make_vae, tiny_unet_inputs, unet_pair

import sdxl
from sdxl.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0


@pytest.fixture(scope="module")
def unets():
    return unet_pair("base")


def _run(unet, seed: int = 0):
    *args, added = tiny_unet_inputs(seed=seed)
    with torch.no_grad():
        return unet(*args, added_cond_kwargs=added).sample


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
    *args, added = tiny_unet_inputs(1, torch.bfloat16)
    with torch.no_grad():
        mine, ref = ours(*args, added_cond_kwargs=added).sample, theirs(*args, added_cond_kwargs=added).sample
    assert mine.dtype == torch.bfloat16 and ours.conv_in.weight.dtype == torch.float8_e4m3fn
    _close(mine.float(), ref.float(), rel=2e-2)
    with pytest.raises(TypeError, match="storage_dtype must be a torch.dtype"):
        copy.deepcopy(unets[1]).enable_layerwise_casting(storage_dtype="fp8")


def test_fused_projections_are_views_and_save(unets, tmp_path):
    """Fusing costs no memory (the separate projections become views of the fused matrix), so in-place weight changes
    (LoRA fusing) reach the fused path; a fused model saves and loads with diffusers' keys."""
    ours = copy.deepcopy(unets[1])
    attn1 = ours.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    attn2 = ours.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    before = _run(ours)
    ours.fuse_qkv_projections()
    ours.fuse_qkv_projections()  # twice: still one fusion, and unfuse still finds the original processors
    assert attn1.to_q.weight.data_ptr() == attn1.to_qkv.weight.data_ptr()
    assert attn2.to_k.weight.data_ptr() == attn2.to_kv.weight.data_ptr() and attn2.to_qkv is None
    n = attn1.to_q.out_features
    with torch.no_grad():
        attn1.to_k.weight.mul_(2)
    assert torch.equal(attn1.to_qkv.weight[n : 2 * n], attn1.to_k.weight)
    with torch.no_grad():
        attn1.to_k.weight.div_(2)
    ours.save_pretrained(tmp_path)
    loaded = sdxl.UNet2DConditionModel.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ours.state_dict().items())
    ours.unfuse_qkv_projections()
    assert attn1.to_qkv is None and attn1.to_q.weight.untyped_storage().nbytes() == attn1.to_q.weight.nbytes
    assert all(isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values())
    assert torch.equal(_run(ours), before)
