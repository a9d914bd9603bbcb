"""Models built as diffusers' tests and user code build them: diffusers' keyword arguments, config dicts, transformers
config objects; the same `torch.manual_seed` gives the reference's random weights; configs read as dicts."""

from __future__ import annotations

import dataclasses

import diffusers
import pytest
import torch
import transformers
from reference import unet_kwargs

import sdxl

VAE_KWARGS = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 128,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}
TEXT_KWARGS = {
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 1,
    "vocab_size": 1000,
    "hidden_act": "gelu",
    "projection_dim": 32,
}
VISION_KWARGS = {
    "hidden_size": 32,
    "image_size": 28,
    "projection_dim": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "patch_size": 14,
}


def _seeded(build):
    torch.manual_seed(0)
    return build()


def _assert_same_weights(ours: torch.nn.Module, theirs_sd: dict[str, torch.Tensor]) -> None:
    mine = ours.state_dict()
    assert set(mine) == set(theirs_sd)
    different = [k for k in mine if not torch.equal(mine[k], theirs_sd[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("time_cond_proj_dim", [None, 16])
def test_unet_from_diffusers_keywords_has_diffusers_random_weights(time_cond_proj_dim):
    kwargs = dict(unet_kwargs("base"), time_cond_proj_dim=time_cond_proj_dim)
    theirs = _seeded(lambda: diffusers.UNet2DConditionModel(**kwargs))
    ours = _seeded(lambda: sdxl.UNet2DConditionModel(**kwargs))
    _assert_same_weights(ours, theirs.state_dict())
    assert list(ours.attn_processors) == list(theirs.attn_processors)  # IP-Adapter weight ids follow this order


def test_vae_from_diffusers_keywords_has_diffusers_random_weights():
    theirs = _seeded(lambda: diffusers.AutoencoderKL(**VAE_KWARGS))
    ours = _seeded(lambda: sdxl.AutoencoderKL(**VAE_KWARGS))
    _assert_same_weights(ours, theirs.state_dict())


@pytest.mark.parametrize("name", ["CLIPTextModel", "CLIPTextModelWithProjection"])
def test_clip_text_from_config_has_transformers_random_weights(name):
    theirs = _seeded(lambda: getattr(transformers, name)(transformers.CLIPTextConfig(**TEXT_KWARGS)))
    ours = _seeded(lambda: getattr(sdxl, name)(sdxl.CLIPTextConfig(**TEXT_KWARGS)))
    # transformers 5 writes CLIPTextModel without the `text_model.` prefix (REFERENCE-NOTES 1)
    expected = {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
        for k, v in theirs.state_dict().items()
    }
    _assert_same_weights(ours, expected)
    # a transformers config object and plain keywords build the same model
    from_theirs = _seeded(lambda: getattr(sdxl, name)(transformers.CLIPTextConfig(**TEXT_KWARGS)))
    from_keywords = _seeded(lambda: getattr(sdxl, name)(**TEXT_KWARGS))
    for other in (from_theirs, from_keywords):
        _assert_same_weights(other, ours.state_dict())


def test_clip_vision_from_config_has_transformers_random_weights():
    config = transformers.CLIPVisionConfig(**VISION_KWARGS)
    theirs = _seeded(lambda: transformers.CLIPVisionModelWithProjection(config))
    ours = _seeded(lambda: sdxl.CLIPVisionModelWithProjection(sdxl.CLIPVisionConfig(**VISION_KWARGS)))
    _assert_same_weights(ours, theirs.state_dict())


def test_configs_read_like_diffusers_frozen_dict():
    unet = sdxl.UNet2DConditionModel(**unet_kwargs("base"))
    theirs = diffusers.UNet2DConditionModel(**unet_kwargs("base"))
    config = unet.config
    assert config["block_out_channels"] == config.block_out_channels == config.get("block_out_channels") == (32, 64)
    assert config.get("no_such_key", 7) == 7 and "cross_attention_dim" in config and "no_such_key" not in config
    assert config["class_embed_type"] is None  # a feature sdxl does not build reads as off
    with pytest.raises(KeyError):
        config["no_such_key"]
    ours_dict = dict(config)
    # every key diffusers' config has, with the same values (tuples/lists aside); dropout is training-only (ignored)
    keys = [k for k in theirs.config if not k.startswith("_") and k != "dropout"]
    missing = [k for k in keys if k not in ours_dict]
    assert not missing, missing
    for key, value in theirs.config.items():
        if key in keys:
            expected = list(value) if isinstance(value, tuple) else value
            got = list(ours_dict[key]) if isinstance(ours_dict[key], tuple) else ours_dict[key]
            assert got == expected, key
    vae = sdxl.AutoencoderKL(**VAE_KWARGS)
    assert vae.config.get("block_out_channels") == (32, 64) and vae.config["scaling_factor"] == 0.18215
    assert sdxl.CLIPTextConfig(**TEXT_KWARGS)["hidden_size"] == 32


def test_every_key_of_diffusers_sdxl_configs_is_accepted():
    for kwargs in (unet_kwargs("base"), unet_kwargs("refiner"), unet_kwargs("inpaint")):
        full = dict(diffusers.UNet2DConditionModel(**kwargs).config)
        ours = sdxl.UNet2DConditionModel(**full)
        assert ours.config == sdxl.UNet2DConditionModel(**kwargs).config
    vae_full = dict(diffusers.AutoencoderKL(**VAE_KWARGS).config)
    assert sdxl.AutoencoderKL(**vae_full).config == sdxl.AutoencoderKL(**VAE_KWARGS).config


def test_from_config_and_config_objects():
    unet = sdxl.UNet2DConditionModel(**unet_kwargs("base"))
    again = sdxl.UNet2DConditionModel.from_config(unet.config)
    assert again.config == unet.config
    assert sdxl.UNet2DConditionModel.from_config(dict(unet.config)).config == unet.config
    changed = sdxl.UNet2DConditionModel(unet.config, sample_size=64)
    assert changed.config == dataclasses.replace(unet.config, sample_size=64)
    assert sdxl.AutoencoderKL.from_config(VAE_KWARGS).config == sdxl.AutoencoderKL(**VAE_KWARGS).config


def test_constructor_errors():
    with pytest.raises(TypeError, match="UNet2DConditionModel\\(\\) takes a UNetConfig, a config dict or diffusers'"):
        sdxl.UNet2DConditionModel(3)
    with pytest.raises(ValueError, match="unknown UNet2DConditionModel config key 'made_up'"):
        sdxl.UNet2DConditionModel(**unet_kwargs("base"), made_up=3)
    with pytest.raises(ValueError, match="'act_fn' = 'gelu' is not supported"):
        sdxl.UNet2DConditionModel(**unet_kwargs("base"), act_fn="gelu")
    with pytest.raises(ValueError, match="Unknown CLIPVisionConfig key 'rope'"):
        sdxl.CLIPVisionConfig.from_dict({"rope": 3})
    with pytest.raises(ValueError, match="image_size=30 is not a multiple of patch_size=14"):
        sdxl.CLIPVisionConfig(image_size=30, patch_size=14)
    with pytest.raises(TypeError, match="AutoencoderKL\\(\\) takes a VAEConfig"):
        sdxl.AutoencoderKL("vae")


def test_tiny_vae_from_diffusers_keywords_has_diffusers_random_weights():
    kwargs = {"in_channels": 3, "out_channels": 3, "latent_channels": 4}
    theirs = _seeded(lambda: diffusers.AutoencoderTiny(**kwargs))
    ours = _seeded(lambda: sdxl.AutoencoderTiny(**kwargs))
    _assert_same_weights(ours, theirs.state_dict())
    assert ours.config["latent_channels"] == 4 and ours.config.get("act_fn") == "relu"
