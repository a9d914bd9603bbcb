"""Long prompts (long_prompts=True) against compel with truncate_long_prompts=False, padded by hand with compel("").

compel 2.5's own pad_conditioning_tensors_to_same_length fails with two encoders (REFERENCE-NOTES 4), so the
reference pads the shorter side with compel("")'s embedding, which is what that function intends.
"""

from __future__ import annotations

import pytest
import torch
from test_compel_parity import TOL, make_compel, our_embedding
from test_weighting import ANIME, ANIME_NEGATIVE, LION

import sdxl
from sdxl.prompts.weighted import layout_tokens, pad_to_same_length
from sdxl.prompts.weighting import parse_compel

SENTENCES = " ".join(f"sentence number {i} about a red cat on a green mat with a blue hat." for i in range(12))
NO_PUNCTUATION = " ".join(["mountain"] * 100 + ["(river)0.4"] + ["forest+"] * 90 + ["sky"] * 20)
LONG_PROMPTS = {"anime": ANIME, "sentences": SENTENCES, "no_punctuation": NO_PUNCTUATION}


@pytest.fixture(scope="module")
def ours(tiny_base):
    return sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def compel_long(tiny_base):
    return make_compel(tiny_base[1], truncate=False)


def pad_by_hand(compel, tensors):
    """Pad to the longest with compel("") windows: what compel's padding function means to do."""
    empty, _ = compel("")
    longest = max(t.shape[1] for t in tensors)
    return [torch.cat([t] + [empty] * ((longest - t.shape[1]) // 77), dim=1) for t in tensors]


@pytest.mark.parametrize("prompt", LONG_PROMPTS.values(), ids=LONG_PROMPTS.keys())
def test_long_embedding_matches_compel(ours, compel_long, prompt):
    expected, _ = compel_long(prompt)
    assert expected.shape[1] > 77
    torch.testing.assert_close(our_embedding(ours, parse_compel(prompt), truncate=False), expected, **TOL)


def test_windows_split_as_compel(ours):
    """Sentences split after the last "." of a window; no punctuation falls back to word ends; BOS/EOS per window."""
    layout = layout_tokens(ours.tokenizer, parse_compel(SENTENCES), truncate=False)
    ids = layout.ids.view(-1, 77)
    assert ids.shape[0] >= 2 and (ids[:, 0] == ours.tokenizer.bos_token_id).all()
    first = ours.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    eos = first.index("<|endoftext|>")
    assert first[eos - 1] == ".</w>"


@pytest.mark.parametrize("prompt", [LION, ANIME], ids=["lion", "anime"])
def test_encode_prompt_pads_positive_and_negative(ours, compel_long, prompt):
    """The seed's long-prompt cell: compel(p), compel(n), padded to one length, pooled from the plain text."""
    p, p_pooled = compel_long(prompt)
    n, n_pooled = compel_long(ANIME_NEGATIVE)
    p, n = pad_by_hand(compel_long, [p, n])
    mine = ours.encode_prompt(
        prompt, negative_prompt=ANIME_NEGATIVE, prompt_syntax="compel", long_prompts=True, device="cpu"
    )
    for got, want in zip(mine, (p, n, p_pooled, n_pooled)):
        torch.testing.assert_close(got, want, **TOL)


def test_negative_longer_than_positive(ours, compel_long):
    p, _ = compel_long("a cat")
    n, _ = compel_long(SENTENCES)
    p, n = pad_by_hand(compel_long, [p, n])
    mine = ours.encode_prompt("a cat", negative_prompt=SENTENCES, long_prompts=True, device="cpu")
    assert mine[0].shape == mine[1].shape == n.shape
    torch.testing.assert_close(mine[0], p, **TOL)
    torch.testing.assert_close(mine[1], n, **TOL)


def test_batch_rows_padded_to_one_length(ours, compel_long):
    p = pad_by_hand(compel_long, [compel_long(t)[0] for t in ("a cat", ANIME)])
    mine = ours.encode_prompt(["a cat", ANIME], prompt_syntax="compel", long_prompts=True, device="cpu",
                              do_classifier_free_guidance=False)
    torch.testing.assert_close(mine[0], torch.cat(p), **TOL)


def test_plain_long_prompt_without_syntax(ours, compel_long):
    """long_prompts without a syntax reads the text as it is (no weights)."""
    prompt = ANIME.replace("+", "").replace("-", " ").replace("(", "").replace(")", "")
    expected, pooled = compel_long(prompt)
    mine = ours.encode_prompt(prompt, long_prompts=True, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(mine[0], expected, **TOL)
    torch.testing.assert_close(mine[2], pooled, **TOL)


def test_default_still_truncates_as_diffusers(ours, tiny_base):
    mine = ours.encode_prompt(ANIME, negative_prompt=ANIME_NEGATIVE, device="cpu")
    ref = tiny_base[1].encode_prompt(ANIME, negative_prompt=ANIME_NEGATIVE, device="cpu")
    assert mine[0].shape[1] == 77
    for got, want in zip(mine, ref):
        torch.testing.assert_close(got, want, **TOL)


def test_refiner_long_prompt(tiny_refiner):
    """One encoder (text_encoder_2 only): compel with that single encoder, pooled included."""
    from compel import Compel, ReturnedEmbeddingsType

    ref = tiny_refiner[1]
    compel = Compel(tokenizer=ref.tokenizer_2, text_encoder=ref.text_encoder_2, requires_pooled=True,
                    returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                    truncate_long_prompts=False)
    from sdxl.loading.diffusers import load_pipeline_components
    from sdxl.prompts.encode import encode_prompt

    parts, _ = load_pipeline_components(tiny_refiner[0], torch_dtype=torch.float32,
                                        overrides={"unet": None, "vae": None, "scheduler": None})
    mine = encode_prompt(tokenizer=None, text_encoder=None, tokenizer_2=parts["tokenizer_2"],
                         text_encoder_2=parts["text_encoder_2"], prompt=ANIME, prompt_2="ignored by the refiner",
                         prompt_syntax="compel", long_prompts=True, do_classifier_free_guidance=False, device="cpu")
    expected, pooled = compel(ANIME)
    torch.testing.assert_close(mine[0], expected, **TOL)
    torch.testing.assert_close(mine[2], pooled, **TOL)


def test_padding_needs_whole_windows():
    with pytest.raises(ValueError, match="Cannot pad an embedding of 100 tokens to 154.*multiples of 77"):
        pad_to_same_length([torch.zeros(1, 100, 4), torch.zeros(1, 154, 4)], [torch.zeros(1, 77, 4)] * 2)


def test_bad_syntax_fails_before_encoding(ours):
    with pytest.raises(ValueError, match="prompt_syntax='A1111'"):
        ours.encode_prompt("a cat", prompt_syntax="A1111", device="cpu")
