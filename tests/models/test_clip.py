"""sdxl.models.clip against transformers' CLIPTextModel / CLIPTextModelWithProjection on the same weights."""

from __future__ import annotations

import dataclasses

import pytest
import reference
import torch
import transformers

from sdxl.models.clip import (
    BaseModelOutputWithPooling,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelOutput,
    CLIPTextModelWithProjection,
)
from sdxl.tokenizer import CLIPTokenizer

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "(masterpiece:1.2), best quality!!! 東京 😀",
    "a, " * 60,  # truncated
]

# The official SDXL text_encoder / text_encoder_2 config.json files (transformers 4.32 wrote them).
OFFICIAL_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "torch_dtype": "float16", "transformers_version": "4.32.0.dev0", "vocab_size": 49408,
}  # fmt: skip
OFFICIAL_TEXT_ENCODER_2 = {
    **OFFICIAL_TEXT_ENCODER, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "projection_dim": 1280,
}  # fmt: skip


def hf_config(official: dict) -> transformers.CLIPTextConfig:
    """transformers' config from an official config.json dict (fp32: the file's torch_dtype is float16)."""
    skip = ("architectures", "torch_dtype", "transformers_version")
    return transformers.CLIPTextConfig(**{k: v for k, v in official.items() if k not in skip})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def ours_from(ref) -> CLIPTextModelWithProjection | CLIPTextModel:
    """Our model built on the meta device from the reference's config, holding the reference's weights."""
    cls = CLIPTextModelWithProjection if isinstance(ref, transformers.CLIPTextModelWithProjection) else CLIPTextModel
    with torch.device("meta"):
        model = cls(CLIPTextConfig.from_dict(ref.config.to_dict()))
    model.load_state_dict(official_state_dict(ref), strict=True, assign=True)
    return model.eval()


def official_state_dict(ref) -> dict[str, torch.Tensor]:
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix (REFERENCE-NOTES 1); the hub has it."""
    sd = ref.state_dict()
    if isinstance(ref, transformers.CLIPTextModelWithProjection):
        return sd
    return {f"text_model.{k}": v for k, v in sd.items()}


def token_ids(pad_token: str, prompts=PROMPTS) -> torch.Tensor:
    tok = CLIPTokenizer.from_shipped_vocab(pad_token=pad_token)
    return tok(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def encoders():
    te1, te2 = reference.make_text_encoders()
    return (te1, ours_from(te1)), (te2, ours_from(te2))


@pytest.fixture(scope="module")
def ids_by_pad() -> dict[str, torch.Tensor]:
    return {"eot": token_ids("<|endoftext|>"), "bang": token_ids("!")}


def assert_outputs_match(ours, theirs, rel: float = 1e-5):
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert rel_err(a, b) < rel, f"hidden_states[{i}]"
    assert rel_err(ours.last_hidden_state, theirs.last_hidden_state) < rel
    if isinstance(ours, CLIPTextModelOutput):
        assert rel_err(ours.text_embeds, theirs.text_embeds) < rel
    else:
        assert rel_err(ours.pooler_output, theirs.pooler_output) < rel


# ---- parity -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["clip_l", "clip_g"])
@pytest.mark.parametrize("pad", ["eot", "bang"])
@torch.no_grad()
def test_outputs_match_transformers(encoders, ids_by_pad, which, pad):
    ref, ours = encoders[which]
    ids = ids_by_pad[pad]
    assert_outputs_match(ours(ids, output_hidden_states=True), ref(ids, output_hidden_states=True))


@pytest.mark.parametrize("which", [0, 1], ids=["clip_l", "clip_g"])
@torch.no_grad()
def test_attention_mask_and_position_ids_match(encoders, which):
    ref, ours = encoders[which]
    tok = CLIPTokenizer.from_shipped_vocab()
    enc = tok(PROMPTS[:3], padding="max_length", truncation=True, return_tensors="pt")
    # compel passes the mask positionally, possibly None
    assert_outputs_match(
        ours(enc.input_ids, enc.attention_mask, output_hidden_states=True),
        ref(enc.input_ids, enc.attention_mask, output_hidden_states=True),
    )
    assert_outputs_match(
        ours(enc.input_ids, None, output_hidden_states=True), ref(enc.input_ids, output_hidden_states=True)
    )
    short = enc.input_ids[:, :12]
    positions = torch.arange(3, 15)[None].expand(3, -1)
    assert_outputs_match(
        ours(short, position_ids=positions, output_hidden_states=True),
        ref(short, position_ids=positions, output_hidden_states=True),
    )


@torch.no_grad()
def test_legacy_eos_pooling_matches(ids_by_pad):
    """eos_token_id == 2 (official configs) pools at the largest id, even an added token's; otherwise the first eos."""
    cfg = reference.text_encoder_config(32, 2, "gelu")
    cfg.eos_token_id, cfg.vocab_size = 2, 49410
    torch.manual_seed(1)
    ref = transformers.CLIPTextModelWithProjection(cfg)
    ref.config._attn_implementation = "eager"
    ref.eval()
    ours = ours_from(ref)
    ids = ids_by_pad["bang"].clone()
    ids[0, 3] = 49409  # an added (textual inversion) token: the largest id, so the legacy path pools here
    for model_ids in (ids, ids_by_pad["eot"]):
        assert_outputs_match(ours(model_ids, output_hidden_states=True), ref(model_ids, output_hidden_states=True))
    out = ours(ids, output_hidden_states=True)
    hidden = ours.text_model.final_layer_norm(out.hidden_states[-1])
    assert torch.allclose(ours.text_projection(hidden[0, 3]), out.text_embeds[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["clip_l", "clip_g"])
@torch.no_grad()
def test_output_conventions(encoders, ids_by_pad, which):
    ref, ours = encoders[which]
    ids = ids_by_pad["eot"][:2]
    for hidden in (False, True):
        a, b = ours(ids, output_hidden_states=hidden), ref(ids, output_hidden_states=hidden)
        ta, tb = (
            ours(ids, output_hidden_states=hidden, return_dict=False),
            ref(ids, output_hidden_states=hidden, return_dict=False),
        )
        assert isinstance(ta, tuple) and len(ta) == len(tb) == len(a.to_tuple()) == (3 if hidden else 2)
        for x, y, z in zip(ta, tb, a.to_tuple()):
            if isinstance(y, tuple):
                assert all(rel_err(u, v) < 1e-5 for u, v in zip(x, y))
            else:
                assert rel_err(x, y) < 1e-5 and torch.equal(x, z)
        assert rel_err(a[0], b[0]) < 1e-5 and rel_err(a[1], b[1]) < 1e-5
        assert (a.hidden_states is None) == (not hidden)
    if which == 0:
        assert isinstance(a, BaseModelOutputWithPooling)
        assert torch.equal(a[0], a.last_hidden_state) and a[0].ndim == 3
        assert torch.equal(a["pooler_output"], a.pooler_output)
    else:
        # diffusers reads the pooled vector as `out[0]`; compel picks `pooler_output` over `text_embeds` if present
        assert torch.equal(a[0], a.text_embeds) and a[0].ndim == 2
        assert not hasattr(a, "pooler_output")


# ---- structure ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["clip_l", "clip_g"])
def test_state_dict_keys_and_counts(encoders, which):
    ref, ours = encoders[which]
    assert list(ours.state_dict()) == list(official_state_dict(ref))
    assert ours.num_parameters() == ref.num_parameters()
    assert list(ours.buffers()) == []
    assert all(p.device.type == "cpu" for p in ours.parameters())  # meta + assign left nothing on meta
    assert ours.text_model.final_layer_norm is ours.get_submodule("text_model.final_layer_norm")


@pytest.mark.parametrize(
    ("preset", "official", "ref_cls"),
    [
        ("clip_l", OFFICIAL_TEXT_ENCODER, transformers.CLIPTextModel),
        ("clip_g", OFFICIAL_TEXT_ENCODER_2, transformers.CLIPTextModelWithProjection),
    ],
)
def test_full_size_presets_on_meta(preset, official, ref_cls):
    config = getattr(CLIPTextConfig, preset)()
    assert CLIPTextConfig.from_dict(official) == config
    cls = CLIPTextModel if ref_cls is transformers.CLIPTextModel else CLIPTextModelWithProjection
    with torch.device("meta"):
        ours = cls(config)
        ref = ref_cls(hf_config(official))
    assert ours.num_parameters() == ref.num_parameters()
    assert list(ours.state_dict()) == list(official_state_dict(ref))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in official_state_dict(ref).items()
    }


def test_config_round_trip_and_transformers_dict(encoders):
    ref, ours = encoders[1]
    assert CLIPTextConfig.from_dict(ours.config.to_dict()) == ours.config
    hf = ref.config.to_dict()
    for key in (
        "hidden_size",
        "intermediate_size",
        "projection_dim",
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_act",
        "layer_norm_eps",
        "eos_token_id",
        "vocab_size",
    ):
        assert getattr(ours.config, key) == hf[key], key
    # ignored keys (metadata, dropout) and null unknown keys do not matter; the init scales are read (they shape
    # the random weights of a freshly built model)
    assert (
        CLIPTextConfig.from_dict({**hf, "dropout": 0.3, "attention_dropout": 0.1, "some_future_flag": None})
        == ours.config
    )
    assert CLIPTextConfig.from_dict({**hf, "initializer_range": 1.0}).initializer_range == 1.0
    assert CLIPTextConfig.from_dict({}) == CLIPTextConfig()


def test_config_errors():
    with pytest.raises(ValueError, match="'rotary_dim'.*known keys"):
        CLIPTextConfig.from_dict({"rotary_dim": 64})
    with pytest.raises(ValueError, match="hidden_act='relu'.*quick_gelu"):
        CLIPTextConfig.from_dict({"hidden_act": "relu"})
    with pytest.raises(ValueError, match="model_type='clip_vision_model'"):
        CLIPTextConfig.from_dict({"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_attention_heads=8"):
        CLIPTextConfig.from_dict({"hidden_size": 100})
    with pytest.raises(ValueError, match=r"eos_token_id=\[2, 3\]"):
        CLIPTextConfig.from_dict({"eos_token_id": [2, 3]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLIPTextConfig().hidden_size = 3
    with pytest.raises(TypeError, match="takes a CLIPTextConfig, a config dict or diffusers' keyword arguments"):
        CLIPTextModel(32)


def test_forward_errors(encoders, ids_by_pad):
    _, ours = encoders[0]
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        ours(ids_by_pad["eot"], output_attentions=True)
    with pytest.raises(ValueError, match="Sequence length 78 exceeds max_position_embeddings=77"):
        ours(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids is required"):
        ours(None)


# ---- embeddings (textual inversion) -------------------------------------------------------------------------------


@torch.no_grad()
def test_resize_and_set_input_embeddings_match_transformers(ids_by_pad):
    te1, _ = reference.make_text_encoders(seed=3)
    ours = ours_from(te1)
    old = ours.get_input_embeddings().weight.clone()
    new = ours.resize_token_embeddings(49410)
    te1.resize_token_embeddings(49410)
    assert new is ours.get_input_embeddings() and new.weight.shape == (49410, 32)
    assert ours.config.vocab_size == 49410
    assert torch.equal(new.weight[:49408], old)
    assert torch.allclose(new.weight[49408], old.mean(dim=0))
    rows = torch.randn(2, 32)
    new.weight[49408:] = rows
    te1.get_input_embeddings().weight[49408:] = rows
    ids = ids_by_pad["eot"].clone()
    ids[:, 2] = 49409
    assert_outputs_match(ours(ids, output_hidden_states=True), te1(ids, output_hidden_states=True))
    assert ours.resize_token_embeddings(49410) is new
    shrunk = ours.resize_token_embeddings(49408)
    assert torch.equal(shrunk.weight, old) and ours.config.vocab_size == 49408
    replacement = torch.nn.Embedding(49409, 32)
    ours.set_input_embeddings(replacement)
    assert ours.get_input_embeddings() is replacement and ours.config.vocab_size == 49409


def test_embedding_errors(encoders):
    _, ours = encoders[1]
    with pytest.raises(ValueError, match="new_num_tokens must be a positive int, got 0"):
        ours.resize_token_embeddings(0)
    with pytest.raises(ValueError, match="nn.Embedding of width 32"):
        ours.set_input_embeddings(torch.nn.Embedding(10, 16))


# ---- dtypes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_forward(encoders, ids_by_pad, dtype):
    for ref, ours in encoders:
        half = ours_from(ref).to(dtype)
        am = torch.ones_like(ids_by_pad["bang"])
        for mask in (None, am):
            a = half(ids_by_pad["bang"], mask, output_hidden_states=True)
            b = ours(ids_by_pad["bang"], output_hidden_states=True)
            assert a.last_hidden_state.dtype == dtype and half.dtype == dtype
            assert all(torch.isfinite(h).all() for h in a.hidden_states)
            assert rel_err(a.last_hidden_state, b.last_hidden_state) < 5e-2
            assert rel_err(a.hidden_states[-2], b.hidden_states[-2]) < 5e-2


# ---- slow: full size ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["clip_l", "clip_g"])
@torch.no_grad()
def test_full_size_random_weights_match_transformers(preset):
    official = OFFICIAL_TEXT_ENCODER if preset == "clip_l" else OFFICIAL_TEXT_ENCODER_2
    ref_cls = transformers.CLIPTextModel if preset == "clip_l" else transformers.CLIPTextModelWithProjection
    torch.manual_seed(0)
    ref = ref_cls(hf_config(official)).float()
    ref.config._attn_implementation = "eager"
    ref.eval()
    ours = ours_from(ref)  # shares the reference's tensors (assign=True): one copy of the weights
    assert ours.config == getattr(CLIPTextConfig, preset)()
    for pad in ("<|endoftext|>", "!"):
        ids = token_ids(pad, PROMPTS[:3])
        assert_outputs_match(ours(ids, output_hidden_states=True), ref(ids, output_hidden_states=True))


@pytest.mark.slow
@torch.no_grad()
def test_compiles_fullgraph(encoders, ids_by_pad):
    _, ours = encoders[1]
    compiled = torch.compile(ours, fullgraph=True)
    for mask in (None, torch.ones_like(ids_by_pad["bang"])):
        a = compiled(ids_by_pad["bang"], mask, output_hidden_states=True)
        assert_outputs_match(a, ours(ids_by_pad["bang"], output_hidden_states=True))
