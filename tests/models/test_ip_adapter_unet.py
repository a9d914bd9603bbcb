"""IP-Adapter inside the UNet against diffusers on the same weights: every SDXL layout diffusers reads (IP-Adapter,
Plus, Full Face, FaceID, FaceID Plus), several adapters at once, scales, masks, unloading."""

from __future__ import annotations

import pytest
import torch
from ip_adapter_fixtures import KINDS, image_embeds, ip_adapter_state_dict
from reference import unet_pair

from sdxl.models.attention_processor import AttnProcessor2_0


@pytest.fixture(scope="module")
def pair():
    """(diffusers UNet, our UNet) with the same weights; each test loads adapters into fresh copies of these."""
    return unet_pair("base")


def _copies(pair):
    import copy

    return copy.deepcopy(pair[0]), copy.deepcopy(pair[1])


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=g),
        "timestep": torch.tensor(500.0),
        "encoder_hidden_states": torch.randn(batch, 7, 64, generator=g),
        "added": {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.rand(batch, 6, generator=g) * 64,
        },
    }


def _run(unet, embeds=None, masks=None, **extra):
    x = _inputs()
    added = dict(x["added"], **({"image_embeds": embeds} if embeds is not None else {}))
    kwargs = {"cross_attention_kwargs": {"ip_adapter_masks": masks}} if masks is not None else {}
    with torch.no_grad():
        return unet(x["sample"], x["timestep"], x["encoder_hidden_states"], added_cond_kwargs=added, **kwargs).sample


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert (a - b).abs().max() <= rel * b.abs().max(), (a - b).abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_each_layout_matches_diffusers(pair, kind):
    theirs, ours = _copies(pair)
    sd = ip_adapter_state_dict(theirs, kind)
    theirs._load_ip_adapter_weights(sd)
    ours._load_ip_adapter_weights(sd)
    # same modules under the same keys: diffusers' state dict loads into ours as it is
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(ref)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    if kind == "faceid_plus":  # the resampler reads CLIP features set on the layer, as in diffusers
        clip = torch.randn(2, 1, 5, 32)
        for unet in (theirs, ours):
            unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = clip
    embeds = [image_embeds(kind, 2)]
    out = _run(ours, embeds)
    _close(out, _run(theirs, embeds))
    _close(_run(ours, [image_embeds(kind, 2, seed=1)]), _run(theirs, [image_embeds(kind, 2, seed=1)]))
    assert (out - _run(pair[1])).abs().max() > 1e-3  # the image does steer


def test_two_adapters_scales_and_masks(pair):
    theirs, ours = _copies(pair)
    sds = [ip_adapter_state_dict(theirs, "base", seed=1), ip_adapter_state_dict(theirs, "plus", seed=2)]
    theirs._load_ip_adapter_weights(sds)
    ours._load_ip_adapter_weights(sds)
    embeds = [image_embeds("base", 2), image_embeds("plus", 2)]
    _close(_run(ours, embeds), _run(theirs, embeds))
    for unet in (theirs, ours):  # per-adapter scales live on the processors
        for proc in unet.attn_processors.values():
            if hasattr(proc, "scale"):
                proc.scale = [0.5, 0.0]
    _close(_run(ours, embeds), _run(theirs, embeds))
    masks = [torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)]
    masks[0][..., :8] = 1
    _close(_run(ours, embeds, masks), _run(theirs, embeds, masks))
    for unet in (theirs, ours):
        for proc in unet.attn_processors.values():
            if hasattr(proc, "scale"):
                proc.scale = [0.0, 0.0]
    _close(_run(ours, embeds), _run(pair[1]))  # all scales 0: text-only output


def test_unload_and_errors(pair):
    _, ours = _copies(pair)
    sd = ip_adapter_state_dict(ours, "base")
    with pytest.raises(ValueError, match="'image_proj' and 'ip_adapter'"):
        ours._load_ip_adapter_weights({"ip_adapter": sd["ip_adapter"]})
    broken = {"image_proj": sd["image_proj"], "ip_adapter": dict(list(sd["ip_adapter"].items())[2:])}
    with pytest.raises(ValueError, match="has no '1.to_k_ip.weight'"):
        ours._load_ip_adapter_weights(broken)
    assert ours.encoder_hid_proj is None and not ours.ip_adapter_layers()  # a failed load changes nothing
    with pytest.raises(ValueError, match="Unknown IP-Adapter image projection"):
        ours._load_ip_adapter_weights(
            {"image_proj": {"mystery.weight": torch.zeros(1)}, "ip_adapter": sd["ip_adapter"]}
        )
    ours._load_ip_adapter_weights(sd)
    with pytest.raises(ValueError, match="An IP-Adapter is loaded: pass added_cond_kwargs\\['image_embeds'\\]"):
        _run(ours)
    with pytest.raises(ValueError, match="2 IP-Adapter image embeddings were given for 1 loaded"):
        _run(ours, [image_embeds("base", 2)] * 2)
    ours._unload_ip_adapter()
    assert ours.encoder_hid_proj is None and all(
        isinstance(p, AttnProcessor2_0) for p in ours.attn_processors.values()
    )
    _close(_run(ours), _run(pair[1]))
    assert set(ours.state_dict()) == set(pair[1].state_dict())
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        _run(ours, [image_embeds("base", 2)])
