"""Key maps at full SDXL size, shapes only (meta device): both directions cover every key, shapes are consistent,
and diffusers' own converters read the original keys we generate into exactly our keys and shapes."""

from __future__ import annotations

import pytest
import torch

from sdxl.loading import keymaps
from sdxl.loading.single_file import (
    BASE,
    INPAINT,
    REFINER,
    configs_from_shapes,
    detect_kind,
    key_table,
    model_class,
    parts_for,
)
from sdxl.models.clip import CLIPTextConfig
from sdxl.models.unet import UNetConfig
from sdxl.models.vae import VAEConfig

PRESETS = {
    "unet": {BASE: UNetConfig.sdxl_base, REFINER: UNetConfig.sdxl_refiner, INPAINT: UNetConfig.sdxl_inpaint},
    "vae": VAEConfig.sdxl,
    "text_encoder": CLIPTextConfig.clip_l,
    "text_encoder_2": CLIPTextConfig.clip_g,
}


def _config(name, kind):
    preset = PRESETS[name]
    return preset[kind]() if isinstance(preset, dict) else preset()


@pytest.fixture(scope="module", params=[BASE, REFINER, INPAINT])
def full_size(request):
    """kind -> {part name: (our meta state dict, original meta state dict)}."""
    kind = request.param
    out = {}
    for part in parts_for(kind):
        config = _config(part.name, kind)
        with torch.device("meta"):
            ours = dict(model_class(part)(config).state_dict())
        out[part.name] = (part, config, ours, keymaps.to_original(ours, key_table(part, config)))
    return kind, out


def test_both_directions_cover_every_key_with_consistent_shapes(full_size):
    kind, parts = full_size
    originals: dict[str, torch.Tensor] = {}
    for name, (part, config, ours, original) in parts.items():
        assert all(k.startswith(part.prefix) for k in original)
        back = keymaps.from_original(original, key_table(part, config))
        assert back.keys() == ours.keys()
        assert all(back[k].shape == ours[k].shape for k in ours), name
        # nothing in the original dict is unused by the table
        used = {r.original for r in key_table(part, config).values()}
        assert used == set(original)
        originals.update(original)
    assert detect_kind({k: tuple(v.shape) for k, v in originals.items()}) == kind
    # a UNet-only file is told apart by its cross-attention width and pooled-embedding input
    unet_only = {k: tuple(v.shape) for k, v in parts["unet"][3].items()}
    assert detect_kind(unet_only) == kind


def test_special_tensors_have_the_original_shapes(full_size):
    kind, parts = full_size
    g_prefix = keymaps.OPEN_CLIP_REFINER_PREFIX if kind == REFINER else keymaps.OPEN_CLIP_BASE_PREFIX
    _, _, ours_g, original_g = parts["text_encoder_2"]
    assert original_g[g_prefix + "transformer.resblocks.31.attn.in_proj_weight"].shape == (3 * 1280, 1280)
    assert original_g[g_prefix + "transformer.resblocks.31.attn.in_proj_bias"].shape == (3 * 1280,)
    assert original_g[g_prefix + "text_projection"].shape == ours_g["text_projection.weight"].shape[::-1]
    assert original_g[g_prefix + "positional_embedding"].shape == (77, 1280)
    _, _, _, original_vae = parts["vae"]
    assert original_vae["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert original_vae["first_stage_model.encoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    _, _, ours_u, original_u = parts["unet"]
    assert len(original_u) == len(ours_u)
    in_ch = 9 if kind == INPAINT else 4
    assert original_u["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == in_ch


def test_configs_read_from_shapes_equal_the_presets(full_size):
    kind, parts = full_size
    sd = {}
    for _, _, _, original in parts.values():
        sd.update(original)
    configs = configs_from_shapes(sd, kind, tuple(p for p, *_ in parts.values()))
    for name, (_, config, _, _) in parts.items():
        assert configs[name] == config, name


def test_diffusers_converters_agree_on_full_size_keys(full_size):
    from diffusers.loaders import single_file_utils as sfu

    _, parts = full_size
    original = {}
    for _, _, _, o in parts.values():
        original.update(o)
    _, unet_config, unet_ours, _ = parts["unet"]
    _, vae_config, vae_ours, _ = parts["vae"]
    for theirs, ours in (
        (sfu.convert_ldm_unet_checkpoint(original, unet_config.to_dict()), unet_ours),
        (sfu.convert_ldm_vae_checkpoint(original, vae_config.to_dict()), vae_ours),
    ):
        assert theirs.keys() == ours.keys()
        assert all(theirs[k].shape == ours[k].shape for k in ours)
    part, _, g_ours, _ = parts["text_encoder_2"]
    theirs = sfu.convert_open_clip_checkpoint(None, original, prefix=part.prefix)
    assert theirs.keys() == g_ours.keys()
    assert all(theirs[k].shape == g_ours[k].shape for k in g_ours)
    if "text_encoder" in parts:
        _, _, l_ours, _ = parts["text_encoder"]
        theirs = sfu.convert_ldm_clip_checkpoint(original)
        assert theirs.keys() == l_ours.keys()
