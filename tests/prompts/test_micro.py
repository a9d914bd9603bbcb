"""Micro-conditioning time ids against diffusers' _get_add_time_ids (base and refiner layouts), and their checks."""

from __future__ import annotations

import pytest
import torch

from sdxl.prompts.micro import base_time_ids, check_time_ids_length, refiner_time_ids, time_ids_tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_base_layout_matches_diffusers(tiny_base, dtype):
    ref_pipe = tiny_base[1]
    args = ((1024, 768), (32, 16), (896, 640))
    ref = ref_pipe._get_add_time_ids(*args, dtype=dtype, text_encoder_projection_dim=32)
    mine = time_ids_tensor(base_time_ids(*args), unet_config=ref_pipe.unet.config, projection_dim=32, dtype=dtype)
    assert mine.dtype == ref.dtype and torch.equal(mine, ref)


def test_refiner_layout_matches_diffusers(tiny_refiner):
    ref_pipe = tiny_refiner[1]
    ref, ref_negative = ref_pipe._get_add_time_ids(
        (1024, 768), (32, 16), (1024, 768), 6.0, 2.5, (512, 512), (0, 8), (1024, 768),
        dtype=torch.float16, text_encoder_projection_dim=32,
    )
    config = ref_pipe.unet.config
    mine = time_ids_tensor(refiner_time_ids((1024, 768), (32, 16), 6.0), unet_config=config, projection_dim=32,
                           dtype=torch.float16)
    mine_negative = time_ids_tensor(refiner_time_ids((512, 512), (0, 8), 2.5), unet_config=config, projection_dim=32,
                                    dtype=torch.float16)
    assert torch.equal(mine, ref) and torch.equal(mine_negative, ref_negative)


def test_lists_and_tuples_both_work():
    assert base_time_ids([64, 32], (0, 0), [64, 32]) == base_time_ids((64, 32), [0, 0], (64, 32))


@pytest.mark.parametrize(
    ("kind", "n_ids", "match"),
    [
        ("base", 5, "one id more: it was trained with the base layout.*disable `requires_aesthetics_score`"),
        ("refiner", 6, "one id fewer: it was trained with the refiner layout.*requires_aesthetics_score=True"),
        ("base", 8, "Check `unet.config.addition_time_embed_dim`"),
    ],
)
def test_length_check_names_the_fix(tiny_base, tiny_refiner, kind, n_ids, match):
    config = (tiny_base if kind == "base" else tiny_refiner)[1].unet.config
    with pytest.raises(ValueError, match=rf"length {config.projection_class_embeddings_input_dim}.*{n_ids} time ids.*{match}"):
        check_time_ids_length(n_ids, config, projection_dim=32)


def test_length_check_counts_the_pooled_projection(tiny_base):
    with pytest.raises(ValueError, match="pooled projection_dim 64"):
        check_time_ids_length(6, tiny_base[1].unet.config, projection_dim=64)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("original_size", ((64,), (0, 0), (64, 64))),
        ("crops_coords_top_left", ((64, 64), 0, (64, 64))),
        ("target_size", ((64, 64), (0, 0), "64x64")),
    ],
)
def test_each_entry_must_be_a_pair(name, args):
    with pytest.raises(ValueError, match=f"`{name}` must be a pair"):
        base_time_ids(*args)
