"""The adherence checker reads back what the generator drew, and the evaluation prompts are held out."""

from __future__ import annotations

import numpy as np
import pytest

from sdxl.demo import shapes
from sdxl.demo.checker import read_image
from sdxl.demo.evaluate import eval_prompts, score


def _uint8(scene, size=64):
    return ((shapes.render(scene, size).permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def test_checker_reads_ground_truth_images_exactly():
    rng = np.random.default_rng(0)
    triples = shapes.all_triples()
    wrong = []
    for _ in range(300):
        scene = shapes.sample_scene(rng, triples[rng.integers(len(triples))])
        got = read_image(_uint8(scene)).to_dict()
        want = {"colour": scene.colour, "background": scene.background, "shape": scene.shape,
                "position": scene.position}  # fmt: skip
        if got != want:
            wrong.append((scene, got))
    assert len(wrong) <= 3, wrong[:3]  # ~100%: at most 1% of ground-truth images misread


def test_checker_survives_blur_of_a_lowres_original():
    scene = shapes.sample_scene(np.random.default_rng(2), ("red", "triangle", "white"), position="center",
                                size="large")  # fmt: skip
    blurred = shapes.resize(shapes.render(scene, 24), 64)
    image = ((blurred.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    reading = read_image(image)
    assert (reading.colour, reading.background, reading.shape, reading.position) == ("red", "white", "triangle",
                                                                                     "center")  # fmt: skip


def test_checker_on_a_blank_image_finds_no_shape():
    image = np.full((64, 64, 3), shapes.COLOURS["blue"], dtype=np.uint8)
    reading = read_image(image)
    assert reading.background == "blue" and reading.shape is None and reading.colour is None


def test_checker_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        read_image(np.zeros((64, 64)))


def test_eval_prompts_are_heldout_and_score_ground_truth_perfectly():
    items = eval_prompts(50)
    held = set(shapes.heldout_triples())
    images = []
    for it in items:
        e = it["expected"]
        assert (e["colour"], e["shape"], e["background"]) in held
        assert e["colour"] in it["prompt"] and e["shape"] in it["prompt"] and e["background"] in it["prompt"]
        rng = np.random.default_rng(it["seed"])
        images.append(_uint8(shapes.sample_scene(rng, (e["colour"], e["shape"], e["background"]), e["position"])))
    acc = score(items, images)
    assert acc == {"colour": 1.0, "background": 1.0, "shape": 1.0, "position": 1.0}


def test_eval_prompts_need_a_positive_count():
    with pytest.raises(ValueError, match="--n must be a positive"):
        eval_prompts(0)
