"""Weighted prompt embeddings (prompt_syntax) against compel 2.5 with the SDXL settings of the blog seed.

compel runs on transformers' tiny encoders (the `tiny_base` diffusers pipeline); ours runs on our encoders loaded
from the same folder. Truncated prompts (compel's default) here; long prompts in test_long_prompts.py.
"""

from __future__ import annotations

import pytest
import torch
from test_weighting import ANIME, ANIME_NEGATIVE, COMPEL_CORPUS, LION

import sdxl
from sdxl.prompts.weighted import layout_tokens, weighted_embedding
from sdxl.prompts.weighting import parse_a1111, parse_compel

TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_compel(pipe, truncate: bool = True, **kwargs):
    """compel as the blog seed builds it for SDXL."""
    from compel import Compel, ReturnedEmbeddingsType

    return Compel(
        tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
        truncate_long_prompts=truncate,
        **kwargs,
    )


@pytest.fixture(scope="module")
def ours(tiny_base):
    return sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def compel_ref(tiny_base):
    return make_compel(tiny_base[1])


def our_embedding(pipe, fragments, truncate=True):
    with torch.no_grad():
        return torch.cat(
            [
                weighted_embedding(pipe.tokenizer, pipe.text_encoder, fragments, truncate=truncate),
                weighted_embedding(pipe.tokenizer_2, pipe.text_encoder_2, fragments, truncate=truncate),
            ],
            dim=-1,
        )


@pytest.mark.parametrize("prompt", [p for p in COMPEL_CORPUS if p != "()"])  # compel cannot encode "()"
def test_weighted_embedding_matches_compel(ours, compel_ref, prompt):
    expected, _ = compel_ref(prompt)
    torch.testing.assert_close(our_embedding(ours, parse_compel(prompt)), expected, **TOL)


@pytest.mark.parametrize("prompt", [LION, ANIME], ids=["lion", "anime"])
def test_seed_prompts_through_encode_prompt(ours, compel_ref, prompt):
    """The pipeline's encode_prompt(prompt_syntax="compel") gives what compel gives: context and pooled, both sides."""
    p, p_pooled = compel_ref(prompt)
    n, n_pooled = compel_ref(ANIME_NEGATIVE)
    mine = ours.encode_prompt(prompt, negative_prompt=ANIME_NEGATIVE, prompt_syntax="compel", device="cpu")
    for got, want in zip(mine, (p, n, p_pooled, n_pooled)):
        torch.testing.assert_close(got, want, **TOL)
    # the weights matter: the plain encoding differs
    plain = ours.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)[0]
    assert (plain - p).abs().max() > 1e-3


def test_num_images_and_zero_negatives(ours, compel_ref):
    mine = ours.encode_prompt(LION, num_images_per_prompt=2, prompt_syntax="compel", device="cpu")
    p, pooled = compel_ref(LION)
    torch.testing.assert_close(mine[0], p.repeat(2, 1, 1), **TOL)
    torch.testing.assert_close(mine[2], pooled.repeat(2, 1), **TOL)
    assert mine[1].shape == mine[0].shape and not mine[1].any()  # force_zeros_for_empty_prompt still applies


A1111_PROMPTS = [
    "Colorful Roaring Lion sitting on a (victorian:1.2) couch, (flat icon), vector",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "[blurry], (masterpiece:1.4), [[lowres]], \\(literal\\)",
    "(unbalanced words at the end",
]


@pytest.mark.parametrize("prompt", A1111_PROMPTS)
def test_a1111_syntax_uses_compels_formula(ours, compel_ref, prompt):
    """A1111 syntax -> fragments -> the same embedding compel builds from those fragments; pooled on the plain text."""
    fragments = parse_a1111(prompt)
    provider = compel_ref.conditioning_provider
    with torch.no_grad():
        expected = provider.get_embeddings_for_weighted_prompt_fragments(
            text_batch=[[t for t, _ in fragments]], fragment_weights_batch=[[w for _, w in fragments]]
        )
        expected_pooled = provider.get_pooled_embeddings(["".join(t for t, _ in fragments)])
    mine = ours.encode_prompt(prompt, prompt_syntax="a1111", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(mine[0], expected, **TOL)
    torch.testing.assert_close(mine[2], expected_pooled, **TOL)


def test_downweighted_fragment_cut_by_truncation(ours, compel_ref):
    """A down-weighted fragment cut at 75 tokens: compel masks up to and including the EOS; so do we."""
    prompt = "word " * 70 + "(one two three four five six seven eight)0.5 tail"
    layout = layout_tokens(ours.tokenizer, parse_compel(prompt), truncate=True)
    assert layout.ranges[1] == (71, 76) and layout.ranges[2] is None
    expected, _ = compel_ref(prompt)
    torch.testing.assert_close(our_embedding(ours, parse_compel(prompt)), expected, **TOL)


def test_compel_runs_on_our_encoders(ours, compel_ref):
    """compel itself, given our tokenizers and encoders, gives what it gives on transformers'."""
    compel_ours = make_compel(ours)
    for prompt in (LION, ANIME, "a cat-- on a (mat)0.3"):
        for got, want in zip(compel_ours(prompt), compel_ref(prompt)):
            torch.testing.assert_close(got, want, **TOL)
