"""The procedural dataset: determinism from the seed, caption coverage, the held-out split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sdxl.demo import shapes


def test_sample_is_a_pure_function_of_seed_and_index():
    triples = shapes.training_triples()
    a = shapes.make_sample(3, 17, 64, triples)
    b = shapes.make_sample(3, 17, 64, triples)
    c = shapes.make_sample(4, 17, 64, triples)
    assert torch.equal(a.image, b.image) and a.caption == b.caption and a.scene == b.scene
    assert a.original_size == b.original_size and a.crop_top_left == b.crop_top_left
    assert (a.scene, a.caption) != (c.scene, c.caption)
    batch = shapes.make_batch(3, 16, 4, 64, triples)
    assert torch.equal(batch[0][1], a.image) and batch[1][1] == a.caption
    assert batch[2][1].tolist() == [*a.original_size, *a.crop_top_left]


def test_images_are_in_range_and_sized():
    images, captions, micro = shapes.make_batch(0, 0, 16, 64, shapes.training_triples())
    assert images.shape == (16, 3, 64, 64) and len(captions) == 16 and micro.shape == (16, 4)
    assert images.min() >= -1 and images.max() <= 1


def test_heldout_split_covers_every_word_and_pair_in_training():
    held, train = shapes.heldout_triples(), shapes.training_triples()
    assert len(held) == shapes.HELDOUT_COUNT and not set(held) & set(train)
    assert sorted(held + train) == sorted(shapes.all_triples())
    for i, j in itertools.combinations(range(3), 2):
        assert {(t[i], t[j]) for t in held} <= {(t[i], t[j]) for t in train}
    for i, names in enumerate((shapes.COLOURS, shapes.SHAPES, shapes.COLOURS)):
        assert {t[i] for t in train} == set(names)


def test_training_stream_never_renders_a_heldout_combination():
    held = set(shapes.heldout_triples())
    train = shapes.training_triples()
    seen = set()
    for i in range(400):
        scene = shapes.make_sample(0, i, 16, train).scene
        seen.add((scene.colour, scene.shape, scene.background))
    assert not seen & held and len(seen) > 150


def test_captions_cover_templates_sizes_and_positions():
    rng = np.random.default_rng(0)
    scene = shapes.sample_scene(rng, ("orange", "star", "blue"), position="top left", size="small")
    texts = {shapes.caption(scene, t) for t in shapes.TEMPLATES}
    assert len(texts) == len(shapes.TEMPLATES)
    assert "a small orange star in the top left corner on a blue background" in texts
    assert "an orange star on a blue background" in texts  # article, no double space for the empty size word
    captions = [shapes.make_sample(1, i, 16, shapes.training_triples()).caption for i in range(300)]
    for word in [*shapes.COLOURS, *shapes.SHAPES, "small", "large", *shapes.POSITION_WORDS.values()]:
        assert any(word in c for c in captions), word


@pytest.mark.parametrize("position", shapes.POSITIONS)
def test_position_and_size_are_rendered_where_named(position):
    rng = np.random.default_rng(1)
    scene = shapes.sample_scene(rng, ("white", "square", "black"), position=position, size="small")
    mask = shapes.render(scene, 64)[0] > 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cx, cy = xs.float().mean() / 64, ys.float().mean() / 64
    if position == "center":
        assert abs(cx - 0.5) < 0.06 and abs(cy - 0.5) < 0.06
    else:
        assert (cy < 0.5) == position.startswith("top") and (cx < 0.5) == position.endswith("left")
    lo, hi = shapes.SIZE_RANGE["small"]
    assert lo * 64 - 1 <= xs.max() - xs.min() + 1 <= hi * 64 + 1


def test_lowres_originals_are_blurrier_and_crops_shift_content():
    triples = [("white", "square", "black")]
    sharp = shapes.Augment(p_lowres=0.0, p_crop=0.0)
    blurry = shapes.Augment(p_lowres=1.0, min_original=12, p_crop=0.0)
    a = shapes.make_sample(0, 5, 64, triples, sharp)
    b = shapes.make_sample(0, 5, 64, triples, blurry)
    assert a.original_size[0] >= 64 > b.original_size[0] and a.crop_top_left == (0, 0)

    def hf(x):  # high-frequency energy: squared finite differences
        return (x.diff(dim=-1).square().sum() + x.diff(dim=-2).square().sum()).item()

    assert hf(b.image) < hf(a.image)
    cropped = shapes.make_sample(0, 5, 64, triples, shapes.Augment(p_lowres=0.0, p_crop=1.0))
    top, left = cropped.crop_top_left
    canvas = cropped.original_size  # the crop window lies inside a larger canvas
    assert 0 <= top and 0 <= left and max(top, left) > 0 and canvas[0] >= 64


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="unknown shape 'heart'"):
        shapes.shape_inside("heart", np.zeros(1), np.zeros(1))
