"""Textual inversion: pipe.load_textual_inversion as diffusers' SDXL usage (clip_l / clip_g keys of one file)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

import sdxl

TOKEN = "unaestheticXLv31"


@pytest.fixture(scope="module")
def base_ours(tiny_base):
    return sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)


def _with_copied_text_side(cls, pipe, **extra):
    """A pipeline sharing `pipe`'s UNet/VAE/scheduler with copies of its tokenizers and text encoders."""
    text = {k: copy.deepcopy(getattr(pipe, k)) for k in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")}
    return cls(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler, **text, **extra)


@pytest.fixture
def pipes(base_ours, tiny_base):
    """A new sdxl and a new diffusers pipeline: textual inversion changes the text side, so copy it."""
    import diffusers

    ours = _with_copied_text_side(sdxl.StableDiffusionXLPipeline, base_ours)
    theirs = _with_copied_text_side(diffusers.StableDiffusionXLPipeline, tiny_base[1], add_watermarker=False)
    return ours, theirs


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    """An SDXL-style embedding file: 'clip_l' (n, 32) and 'clip_g' (n, 32) for the tiny encoders, n = 2."""
    gen = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("ti") / "embedding.safetensors"
    save_file({"clip_l": torch.randn(2, 32, generator=gen), "clip_g": torch.randn(2, 32, generator=gen)}, str(path))
    return path


def load_both_encoders(pipe, state_dict, token=TOKEN):
    pipe.load_textual_inversion(state_dict["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state_dict["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)


def test_sdxl_two_call_usage_matches_diffusers(pipes, sdxl_file):
    from safetensors.torch import load_file

    ours, theirs = pipes
    state_dict = load_file(str(sdxl_file))
    load_both_encoders(ours, state_dict)
    load_both_encoders(theirs, state_dict)
    for tok_ours, tok_theirs, te_ours, te_theirs in (
        (ours.tokenizer, theirs.tokenizer, ours.text_encoder, theirs.text_encoder),
        (ours.tokenizer_2, theirs.tokenizer_2, ours.text_encoder_2, theirs.text_encoder_2),
    ):
        assert len(tok_ours) == len(tok_theirs)
        ids = [tok_theirs.convert_tokens_to_ids(t) for t in (TOKEN, f"{TOKEN}_1")]
        assert [tok_ours.convert_tokens_to_ids(t) for t in (TOKEN, f"{TOKEN}_1")] == ids
        rows_theirs = te_theirs.get_input_embeddings().weight[ids]
        torch.testing.assert_close(te_ours.get_input_embeddings().weight[ids], rows_theirs)
    prompt = f"a photo in the style of {TOKEN}, sharp"
    kwargs = {"negative_prompt": f"{TOKEN} blurry", "device": "cpu"}
    for mine, ref in zip(ours.encode_prompt(prompt, **kwargs), theirs.encode_prompt(prompt, **kwargs)):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    # the token changes the encoding (multi-vector expansion included)
    plain = theirs.encode_prompt("a photo in the style of, sharp", device="cpu")[0]
    assert (plain - ours.encode_prompt(prompt, device="cpu")[0]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "source",
    ["tensor", "dict", "a1111", "file", "folder"],
)
def test_formats_match_diffusers(pipes, tmp_path, source):
    vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    made = {
        "tensor": lambda: vector,
        "dict": lambda: {TOKEN: vector},
        "a1111": lambda: {"name": TOKEN, "string_to_param": {"*": vector}},
    }
    if source in ("file", "folder"):
        save_file({TOKEN: vector}, str(tmp_path / "learned_embeds.safetensors"))
        embedding = str(tmp_path / "learned_embeds.safetensors") if source == "file" else str(tmp_path)
    else:
        embedding = made[source]()
    ours, theirs = pipes
    token = TOKEN if source == "tensor" else None
    ours.load_textual_inversion(embedding, token=token)
    theirs.load_textual_inversion(embedding, token=token)
    prompt = f"{TOKEN} cat"
    for mine, ref in zip(ours.encode_prompt(prompt, device="cpu"), theirs.encode_prompt(prompt, device="cpu")):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_weighted_and_long_prompts_see_the_token(pipes, sdxl_file):
    from safetensors.torch import load_file

    ours, _ = pipes
    load_both_encoders(ours, load_file(str(sdxl_file)))
    with_token = ours.encode_prompt(f"({TOKEN})1.2 cat", prompt_syntax="compel", device="cpu")[0]
    without = ours.encode_prompt("cat", prompt_syntax="compel", device="cpu")[0]
    assert (with_token - without).abs().max() > 1e-3


@pytest.fixture(scope="module")
def ours_ti(base_ours):
    pipe = _with_copied_text_side(sdxl.StableDiffusionXLPipeline, base_ours)
    pipe.load_textual_inversion(torch.zeros(32), token="<taken>")
    return pipe


ERRORS = [
    ({"pretrained_model_name_or_path": torch.zeros(32)}, ValueError, "needs its token"),
    ({"pretrained_model_name_or_path": torch.zeros(32), "token": "<taken>"}, ValueError, "already in the tokenizer"),
    ({"pretrained_model_name_or_path": torch.zeros(64), "token": "<wide>"}, ValueError, "width 64.*width 32"),
    ({"pretrained_model_name_or_path": {"clip_l": torch.zeros(32), "clip_g": torch.zeros(32)}}, ValueError,
     "state_dict\\['clip_l'\\]"),
    ({"pretrained_model_name_or_path": torch.zeros(2, 2, 32), "token": "<3d>"}, ValueError, "\\(D,\\) or \\(n, D\\)"),
    ({"pretrained_model_name_or_path": "/nonexistent/embedding.safetensors"}, FileNotFoundError, "nonexistent"),
    ({"pretrained_model_name_or_path": 3}, TypeError, "path, a state dict or a tensor.*int"),
    ({"pretrained_model_name_or_path": [torch.zeros(32)] * 2, "token": ["<a>"]}, ValueError, "2 embeddings but 1"),
    ({"pretrained_model_name_or_path": [torch.zeros(32)] * 2, "token": ["<a>", "<a>"]}, ValueError, "duplicates"),
    ({"pretrained_model_name_or_path": torch.zeros(32), "token": "<a>", "cache_dir": "x"}, ValueError, "cache_dir"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ERRORS, ids=[e[2] for e in ERRORS])
def test_errors(ours_ti, kwargs, error, match):
    with pytest.raises(error, match=match):
        ours_ti.load_textual_inversion(**kwargs)


def test_pickle_file_refused(ours_ti, tmp_path):
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<p>": torch.zeros(32)}, path)
    with pytest.raises(ValueError, match="learned_embeds.bin"):
        ours_ti.load_textual_inversion(str(path))


def test_pipeline_without_first_encoder_needs_explicit_one(ours_ti):
    pipe = sdxl.StableDiffusionXLPipeline(**{**ours_ti.components, "text_encoder": None, "tokenizer": None})
    with pytest.raises(ValueError, match="needs a tokenizer and a text encoder"):
        pipe.load_textual_inversion(torch.zeros(32), token="<r>")
