"""AutoencoderTiny against diffusers' on the same weights (fp32 rel 1e-5), and the pipelines with it as `pipe.vae`."""

from __future__ import annotations

import pytest
import torch

import sdxl
from sdxl.models.vae_tiny import AutoencoderTiny, AutoencoderTinyConfig

TINY = {"encoder_block_out_channels": (8, 8, 8, 8), "decoder_block_out_channels": (8, 8, 8, 8),
        "num_encoder_blocks": (1, 2, 1, 1), "num_decoder_blocks": (1, 1, 2, 1)}


def theirs_tiny(seed: int = 0, **kwargs):
    from diffusers import AutoencoderTiny as Theirs

    torch.manual_seed(seed)
    return Theirs(**{**TINY, **kwargs}).eval()


def ours_from(theirs) -> AutoencoderTiny:
    ours = AutoencoderTiny(AutoencoderTinyConfig.from_dict(dict(theirs.config)))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_taesdxl_layout_has_diffusers_keys_and_shapes():
    from diffusers import AutoencoderTiny as Theirs

    with torch.device("meta"):
        theirs = Theirs()
        ours = AutoencoderTiny(AutoencoderTinyConfig.taesdxl())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_encode_decode_forward_match_diffusers():
    theirs = theirs_tiny()
    ours = ours_from(theirs)
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = theirs.encode(x).latents
        assert rel(ours.encode(x).latents, latents) < 1e-5
        assert rel(ours.encode(x, return_dict=False)[0], latents) < 1e-5
        z = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(1)) * 2
        assert rel(ours.decode(z).sample, theirs.decode(z).sample) < 1e-5
        assert rel(ours(x).sample, theirs(x).sample) < 1e-5


def test_config_round_trip_and_errors():
    theirs = theirs_tiny()
    config = AutoencoderTinyConfig.from_dict(dict(theirs.config))
    assert config.block_out_channels == tuple(theirs.config.block_out_channels)
    assert AutoencoderTinyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="act_fn"):
        AutoencoderTinyConfig(act_fn="tanh")
    with pytest.raises(ValueError, match="differ in length"):
        AutoencoderTinyConfig(num_decoder_blocks=(1, 1))
    with pytest.raises(ValueError, match="unknown AutoencoderTiny config key"):
        AutoencoderTinyConfig.from_dict({**config.to_dict(), "mystery": 3})


def test_from_pretrained_reads_a_diffusers_folder(tmp_path):
    theirs = theirs_tiny()
    theirs.save_pretrained(tmp_path)
    ours = sdxl.AutoencoderTiny.from_pretrained(tmp_path)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert rel(ours.decode(z).sample, theirs.decode(z).sample) < 1e-5


@pytest.mark.parametrize("option", ["slicing", "tiling"])
def test_slicing_and_tiling_match_diffusers(option):
    theirs = theirs_tiny()
    ours = ours_from(theirs)
    for model in (ours, theirs):
        getattr(model, f"enable_{option}")()
        model.tile_sample_min_size, model.tile_latent_min_size = 32, 4  # several overlapping tiles
    x = torch.rand(2, 3, 56, 72, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, 4, 7, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel(ours.encode(x).latents, theirs.encode(x).latents) < 1e-5
        assert rel(ours.decode(z).sample, theirs.decode(z).sample) < 1e-5
        ours.disable_tiling()
        ours.disable_slicing()
        plain = ours.decode(z).sample
    if option == "slicing":
        assert rel(plain, theirs.decode(z).sample) < 1e-5
