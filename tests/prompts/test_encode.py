"""sdxl.prompts.encode.encode_prompt with our text encoders/tokenizers against diffusers' encode_prompt."""

from __future__ import annotations

import logging

import pytest
import torch

from sdxl.loading.diffusers import load_pipeline_components
from sdxl.prompts.encode import encode_prompt

SKIP_DENOISER = {"unet": None, "vae": None, "scheduler": None}


@pytest.fixture(scope="module")
def base_encoders(tiny_base):
    components, _ = load_pipeline_components(tiny_base[0], torch_dtype=torch.float32, overrides=SKIP_DENOISER)
    return components


@pytest.fixture(scope="module")
def refiner_encoders(tiny_refiner):
    components, _ = load_pipeline_components(tiny_refiner[0], torch_dtype=torch.float32, overrides=SKIP_DENOISER)
    assert components["text_encoder"] is None and components["tokenizer"] is None
    return components


def ours(components, force_zeros=True, **kwargs):
    encoders = {k: components[k] for k in ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")}
    return encode_prompt(**encoders, device="cpu", force_zeros_for_empty_prompt=force_zeros, **kwargs)


def assert_same(mine, ref):
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    for name, a, b in zip(names, mine, ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


CASES = {
    "default": {"prompt": "a photo of a cat"},
    "batch_x3": {"prompt": ["a cat", "a dog"], "num_images_per_prompt": 3},
    "prompt_2": {"prompt": "a cat", "prompt_2": "an oil painting"},
    "empty_prompt_2": {"prompt": "a cat", "prompt_2": ""},
    "negative": {"prompt": "a cat", "negative_prompt": "blurry"},
    "negative_2_alone_keeps_zeros": {"prompt": "a cat", "negative_prompt_2": "blurry"},
    "negatives": {"prompt": ["a cat", "a dog"], "negative_prompt": ["dark", "wet"], "negative_prompt_2": "blurry"},
    "no_cfg": {"prompt": "a cat", "do_classifier_free_guidance": False, "num_images_per_prompt": 2},
    "clip_skip_not_on_negatives": {"prompt": "a cat", "negative_prompt": "dark", "clip_skip": 1},
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_matches_diffusers(base_encoders, tiny_base, kwargs):
    ref = tiny_base[1].encode_prompt(device="cpu", **kwargs)
    assert_same(ours(base_encoders, **kwargs), ref)


def test_encodes_empty_negative_without_force_zeros(base_encoders, tiny_base):
    import diffusers

    ref_pipe = diffusers.StableDiffusionXLPipeline(
        **tiny_base[1].components, force_zeros_for_empty_prompt=False, add_watermarker=False
    )
    ref = ref_pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=2)
    mine = ours(base_encoders, force_zeros=False, prompt="a cat", num_images_per_prompt=2)
    assert_same(mine, ref)
    assert mine[1].abs().sum() > 0  # the encoded "", not zeros


def test_given_embeds_pass_through(base_encoders, tiny_base):
    embeds, _, pooled, _ = tiny_base[1].encode_prompt("a dog", device="cpu", do_classifier_free_guidance=False)
    kwargs = {"prompt": None, "prompt_embeds": embeds * 2, "pooled_prompt_embeds": pooled * 2, "negative_prompt": "x"}
    ref = tiny_base[1].encode_prompt(device="cpu", num_images_per_prompt=2, **kwargs)
    assert_same(ours(base_encoders, num_images_per_prompt=2, **kwargs), ref)


def test_long_prompt_is_truncated_with_a_warning(base_encoders, tiny_base, caplog):
    prompt = " ".join(["cat"] * 100)
    with caplog.at_level(logging.WARNING, logger="sdxl.prompts.encode"):
        mine = ours(base_encoders, prompt=prompt)
    assert_same(mine, tiny_base[1].encode_prompt(prompt, device="cpu"))
    assert "longer than the 77 tokens" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "a cat"},
        {"prompt": "a cat", "prompt_2": "ignored by the refiner", "negative_prompt": "dark"},
        {"prompt": ["a cat", "a dog"], "num_images_per_prompt": 2},
    ],
    ids=["default", "prompt_2_ignored", "batch"],
)
def test_refiner_uses_only_encoder_2(refiner_encoders, tiny_refiner, kwargs):
    """No text_encoder/tokenizer: only encoder 2, prompt_2 unused; the refiner does not zero negatives."""
    ref = tiny_refiner[1].encode_prompt(device="cpu", **kwargs)
    mine = ours(refiner_encoders, force_zeros=False, **kwargs)
    assert_same(mine, ref)
    assert mine[0].shape[-1] == refiner_encoders["text_encoder_2"].config.hidden_size
