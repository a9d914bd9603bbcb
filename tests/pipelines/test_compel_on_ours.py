"""compel on our pipeline, as the blog seed uses it, and our own prompt_syntax/long_prompts arguments.

Images from our pipeline must equal diffusers' images made with compel's embeddings (2/255).
"""

from __future__ import annotations

import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call

# the blog seed's prompts (/work/shared/seeds/001_54c0feb2e3602345.txt)
LION = "Colorful Roaring Lion sitting on a (victorian)1.2 couch, (flat icon)+, vector+"
LION_NEGATIVE = "realistic, realism, photograph"
ANIME = (
    "(Anime Portrait)1.2 of a young woman, pretty+ stunning+ blue eyes, soft face, long pink hair, bow hairclip, pink "
    "school uniform, high quality, hq, 4k, 8k, award-winning, happy white cat in her arms, dawn+, close-up+, (cherry "
    "blossoms)---, (wearing golden blossom earrings)+, (bokeh effect)-, cute, lake with (white cranes)++ in the "
    "background, butterflies--, reflections--"
)
ANIME_NEGATIVE = (
    "Bad quality, artifacts, low quality, lowres, deformed+, malformed+, extra hands, extra limbs, bad eyes, ugly, "
    "lowres, washed out, poor quality"
)


def seed_compel(pipe, truncate_long_prompts=True):
    """The seed's cell, verbatim apart from the pipeline variable."""
    from compel import Compel, ReturnedEmbeddingsType

    return Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                  text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                  returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                  requires_pooled=[False, True],
                  truncate_long_prompts=truncate_long_prompts)


def embeds(compel, positive, negative, pad=False):
    p, p_pooled = compel(positive)
    n, n_pooled = compel(negative)
    if pad:  # compel 2.5's pad_conditioning_tensors_to_same_length fails with two encoders: pad with compel("")
        empty, _ = compel("")
        longest = max(p.shape[1], n.shape[1])
        p, n = (torch.cat([t] + [empty] * ((longest - t.shape[1]) // 77), dim=1) for t in (p, n))
    return {"prompt_embeds": p, "pooled_prompt_embeds": p_pooled,
            "negative_prompt_embeds": n, "negative_pooled_prompt_embeds": n_pooled}


def run(pipe, **kwargs):
    kwargs.setdefault("prompt", None)
    return call(pipe, **kwargs)


def test_weighted_compel_embeds_same_image(ours, theirs):
    """Seed cell 1: compel on each pipeline's own encoders, embeddings into the pipeline."""
    mine = run(ours, **embeds(seed_compel(ours), LION, LION_NEGATIVE))
    ref = run(theirs, **embeds(seed_compel(theirs), LION, LION_NEGATIVE))
    assert_images_match(mine, ref)
    assert_changes(ref, call(theirs, prompt=LION, negative_prompt=LION_NEGATIVE))


def test_long_compel_embeds_same_image(ours, theirs):
    """Seed cell 2: truncate_long_prompts=False with positive and negative padded to one length."""
    mine_embeds = embeds(seed_compel(ours, False), ANIME, ANIME_NEGATIVE, pad=True)
    ref_embeds = embeds(seed_compel(theirs, False), ANIME, ANIME_NEGATIVE, pad=True)
    assert ref_embeds["prompt_embeds"].shape[1] == 154
    for name, tensor in ref_embeds.items():
        torch.testing.assert_close(mine_embeds[name], tensor, rtol=1e-5, atol=1e-5, msg=name)
    assert_images_match(run(ours, **mine_embeds), run(theirs, **ref_embeds))


def test_prompt_syntax_argument_gives_compels_image(ours, theirs):
    """Our own parser and formula (prompt_syntax="compel") give diffusers' image with compel's embeddings."""
    mine = call(ours, prompt=LION, negative_prompt=LION_NEGATIVE, prompt_syntax="compel")
    ref = run(theirs, **embeds(seed_compel(theirs), LION, LION_NEGATIVE))
    assert_images_match(mine, ref)


def test_long_prompts_argument_gives_compels_image(ours, theirs):
    mine = call(ours, prompt=ANIME, negative_prompt=ANIME_NEGATIVE, prompt_syntax="compel", long_prompts=True,
                output_type="pil")
    ref = run(theirs, output_type="pil", **embeds(seed_compel(theirs, False), ANIME, ANIME_NEGATIVE, pad=True))
    assert_images_match(mine, ref)
    truncated = run(theirs, output_type="pil", **embeds(seed_compel(theirs), ANIME, ANIME_NEGATIVE))
    assert_changes(ref, truncated)


def test_default_arguments_unchanged(ours, theirs):
    assert_images_match(call(ours, prompt=ANIME), call(theirs, prompt=ANIME))


def test_unknown_prompt_syntax(ours):
    with pytest.raises(ValueError, match="prompt_syntax='compell'.*compel.*a1111"):
        call(ours, prompt=LION, prompt_syntax="compell")


def test_long_prompts_must_be_bool(ours):
    with pytest.raises(TypeError, match="`long_prompts` must be True or False.*'yes'"):
        call(ours, prompt=LION, long_prompts="yes")
