"""Parity of our UNet2DConditionModel with diffusers' on the same weights (tiny configs; full size is slow)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import reference
import torch

from sdxl.models.unet import UNet2DConditionModel, UNet2DConditionOutput, UNetConfig

KINDS = ("base", "refiner", "inpaint")
N_TIME_IDS = {"base": 6, "inpaint": 6, "refiner": 5, "sd15_conv": 0, "lcm_cond": 6}


def rel_err(expected: torch.Tensor, actual: torch.Tensor) -> float:
    expected, actual = expected.double(), actual.double()
    return ((expected - actual).norm() / expected.norm()).item()


def _diffusers_kwargs(kind: str) -> dict:
    """reference.unet_kwargs plus two variants that exercise code paths SDXL checkpoints do not use."""
    if kind == "sd15_conv":  # SD 1.x style: no addition embedding, 1x1-conv transformer projections
        return dict(
            reference.unet_kwargs("base"),
            addition_embed_type=None,
            addition_time_embed_dim=None,
            projection_class_embeddings_input_dim=None,
            use_linear_projection=False,
        )
    if kind == "lcm_cond":  # timestep_cond through time_embedding.cond_proj (LCM-distilled UNets)
        return dict(reference.unet_kwargs("base"), time_cond_proj_dim=16)
    return reference.unet_kwargs(kind)


_REFS: dict[str, torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread: on the shared 2-core machine under load, two OpenMP threads made a
    tiny UNet forward take ~10 s instead of ~0.1 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def diffusers_unet(kind: str):
    if kind not in _REFS:
        if kind in KINDS:
            _REFS[kind] = reference.make_unet(kind)
        else:
            from diffusers import UNet2DConditionModel as DiffusersUNet

            torch.manual_seed(0)
            unet = DiffusersUNet(**_diffusers_kwargs(kind))
            unet.set_default_attn_processor()
            _REFS[kind] = unet.eval()
    return _REFS[kind]


def our_unet(kind: str) -> UNet2DConditionModel:
    ref = diffusers_unet(kind)
    ours = UNet2DConditionModel(UNetConfig.from_dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def inputs(kind: str, batch: int = 2, size: tuple[int, int] = (16, 16), seed: int = 0) -> dict:
    kw = _diffusers_kwargs(kind)
    g = torch.Generator().manual_seed(seed)
    out = {
        "sample": torch.randn(batch, kw["in_channels"], *size, generator=g),
        "encoder_hidden_states": torch.randn(batch, 7, kw["cross_attention_dim"], generator=g),
    }
    if N_TIME_IDS[kind]:
        time_ids = torch.tensor([1024.0, 768.0, 0.0, 64.0, 1024.0, 1024.0])[: N_TIME_IDS[kind]]
        out["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, reference.TEXT2_PROJECTION, generator=g),
            "time_ids": (time_ids + torch.arange(batch)[:, None] * 32.0),
        }
    if kind == "lcm_cond":
        out["timestep_cond"] = torch.randn(batch, 16, generator=g)
    return out


@pytest.mark.parametrize("kind", KINDS + ("sd15_conv", "lcm_cond"))
def test_forward_matches_diffusers(kind):
    ref, ours = diffusers_unet(kind), our_unet(kind)
    x = inputs(kind)
    timestep = torch.tensor([10.0, 981.0])
    with torch.no_grad():
        expected = ref(timestep=timestep, **x).sample
        actual = ours(timestep=timestep, **x).sample
    assert actual.shape == expected.shape
    assert rel_err(expected, actual) < 1e-5


@pytest.mark.parametrize(
    "timestep", [500, 999.5, torch.tensor(250.0), torch.tensor([250.0])], ids=["int", "float", "0dim", "1elem"]
)
def test_scalar_timesteps_match_diffusers(timestep):
    ref, ours = diffusers_unet("base"), our_unet("base")
    x = inputs("base")
    with torch.no_grad():
        expected = ref(timestep=timestep, **x).sample
        actual = ours(timestep=timestep, **x).sample
    assert rel_err(expected, actual) < 1e-5


@pytest.mark.parametrize("kind", ["base", "refiner"])
@pytest.mark.parametrize("size", [(17, 15), (9, 12)])
def test_odd_latent_sizes_match_diffusers(kind, size):
    ref, ours = diffusers_unet(kind), our_unet(kind)
    x = inputs(kind, batch=1, size=size)
    with torch.no_grad():
        expected = ref(timestep=torch.tensor([300.0]), **x).sample
        actual = ours(timestep=torch.tensor([300.0]), **x).sample
    assert actual.shape == expected.shape == x["sample"].shape
    assert rel_err(expected, actual) < 1e-5


@pytest.mark.parametrize("kind", KINDS + ("sd15_conv", "lcm_cond"))
def test_parameter_count_and_keys_match_diffusers(kind):
    ref, ours = diffusers_unet(kind), our_unet(kind)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert list(ours.state_dict()) != [] and set(ours.state_dict()) == set(ref.state_dict())


def test_call_forms():
    ours = our_unet("base")
    x = inputs("base")
    sample, context, added = x["sample"], x["encoder_hidden_states"], x["added_cond_kwargs"]
    t = torch.tensor([10.0, 981.0])
    with torch.no_grad():
        out = ours(sample, t, encoder_hidden_states=context, added_cond_kwargs=added)
        assert isinstance(out, UNet2DConditionOutput)
        expected = out.sample
        assert torch.equal(out[0], expected) and torch.equal(out["sample"], expected)
        as_tuple = ours(sample, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], expected)
        positional = ours(sample, t, context, added).sample
        keywords = ours(sample, t, context, text_embeds=added["text_embeds"], time_ids=added["time_ids"]).sample
        explicit = ours.predict(sample, t, context, added["text_embeds"], added["time_ids"])
        # diffusers' other keywords are accepted when they carry nothing
        nones = ours(
            sample,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs=added,
            timestep_cond=None,
            cross_attention_kwargs=None,
            class_labels=None,
            attention_mask=None,
            encoder_attention_mask=None,
            down_block_additional_residuals=None,
            mid_block_additional_residual=None,
            down_intrablock_additional_residuals=None,
        ).sample
        one_t = ours(sample, torch.tensor([500.0]), context, added).sample
        each_t = ours(sample, torch.tensor([500.0, 500.0]), context, added).sample
    for other in (positional, keywords, explicit, nones):
        assert torch.equal(other, expected)
    assert torch.equal(one_t, each_t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"down_block_additional_residuals": (torch.zeros(1),)}, "down_block_additional_residuals"),
        ({"mid_block_additional_residual": torch.zeros(1)}, "mid_block_additional_residual"),
        ({"class_labels": torch.zeros(2)}, "class_labels"),
        ({"attention_mask": torch.ones(2, 7)}, "attention_mask"),
        ({"controlnet_cond": torch.zeros(1)}, "controlnet_cond"),
        ({"cross_attention_kwargs": {"gligen": {}}}, "cross_attention_kwargs keys \\['gligen'\\]"),
        ({"cross_attention_kwargs": {"scale": "big"}}, "must be a number"),
    ],
)
def test_unsupported_forward_kwargs_are_type_errors(kwargs, match):
    ours = our_unet("base")
    with pytest.raises(TypeError, match=match):
        ours(timestep=1, **inputs("base"), **kwargs)


def test_added_cond_errors():
    ours = our_unet("base")
    x = inputs("base")
    added = x.pop("added_cond_kwargs")
    with pytest.raises(TypeError, match="hint_embeds"):
        ours(timestep=1, **x, added_cond_kwargs=dict(added, hint_embeds=torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        ours(timestep=1, **x, added_cond_kwargs=dict(added, image_embeds=[torch.zeros(2, 1, 4)]))
    with pytest.raises(TypeError, match="not both"):
        ours(timestep=1, **x, added_cond_kwargs=added, text_embeds=added["text_embeds"])
    with pytest.raises(TypeError, match="must be a dict"):
        ours(x["sample"], 1, x["encoder_hidden_states"], added["text_embeds"])
    with pytest.raises(ValueError, match="needs text_embeds and time_ids"):
        ours(timestep=1, **x, added_cond_kwargs={"text_embeds": added["text_embeds"]})
    with pytest.raises(ValueError, match="refiner 5"):  # refiner-style ids into a base UNet
        ours(timestep=1, **x, added_cond_kwargs=dict(added, time_ids=added["time_ids"][:, :5]))
    with pytest.raises(ValueError, match="no addition embedding"):
        our_unet("sd15_conv")(timestep=1, **x, added_cond_kwargs=added)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        ours(timestep=1, **x, added_cond_kwargs=added, timestep_cond=torch.zeros(2, 16))


def test_meta_construction_then_assign_load():
    ref = diffusers_unet("base")
    with torch.device("meta"):
        ours = UNet2DConditionModel(UNetConfig.from_dict(ref.config))
    assert all(p.is_meta for p in ours.parameters())
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    tensors = list(ours.parameters()) + list(ours.buffers())
    assert not any(t.is_meta for t in tensors)
    assert list(ours.buffers()) == []  # nothing outside the state dict
    x = inputs("base")
    with torch.no_grad():
        assert rel_err(ref(timestep=7, **x).sample, ours.eval()(timestep=7, **x).sample) < 1e-5


def test_config_reads_match_diffusers():
    """The `unet.config.<key>` reads pipelines do give diffusers' values (neutral keys included)."""
    for kind in ("base", "refiner"):
        ref, ours = diffusers_unet(kind), our_unet(kind)
        for key in (
            "sample_size",
            "in_channels",
            "out_channels",
            "addition_time_embed_dim",
            "time_cond_proj_dim",
            "projection_class_embeddings_input_dim",
            "cross_attention_dim",
            "block_out_channels",
            "addition_embed_type",
            "class_embed_type",
            "encoder_hid_dim_type",
            "attention_type",
        ):
            theirs, mine = ref.config[key], getattr(ours.config, key)
            assert (list(mine) if isinstance(mine, tuple) else mine) == (
                list(theirs) if isinstance(theirs, tuple) else theirs
            ), key
        assert ours.add_embedding.linear_1.in_features == ref.add_embedding.linear_1.in_features
    with pytest.raises(AttributeError, match="no_such_key"):
        UNetConfig().no_such_key  # noqa: B018


@pytest.mark.parametrize("kind", KINDS + ("sd15_conv",))
def test_to_dict_round_trip(kind):
    config = UNetConfig.from_dict(diffusers_unet(kind).config)
    as_dict = config.to_dict()
    assert UNetConfig.from_dict(json.loads(json.dumps(as_dict))) == config
    assert as_dict["_class_name"] == "UNet2DConditionModel"


@pytest.mark.parametrize("preset", ["sdxl_base", "sdxl_refiner", "sdxl_inpaint"])
def test_presets_round_trip(preset):
    config = getattr(UNetConfig, preset)()
    assert UNetConfig.from_dict(config.to_dict()) == config


def _base_dict() -> dict:
    return dict(diffusers_unet("base").config)


@pytest.mark.parametrize(
    "key, value",
    [
        ("attention_type", "gated"),
        ("time_embedding_type", "fourier"),
        ("class_embed_type", "timestep"),
        ("encoder_hid_dim_type", "text_proj"),
        ("upcast_attention", True),
        ("only_cross_attention", [False, True]),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
        ("addition_embed_type", "text"),
        ("down_block_types", ["DownBlock2D", "AttnDownBlock2D"]),
        ("transformer_layers_per_block", [[1, 1], [2, 2]]),
        ("attention_head_dim", [2, 4, 8]),
        ("attention_head_dim", [2, 5]),  # 5 heads do not divide 64 channels
        ("some_new_key", 3),
        ("_class_name", "AutoencoderKL"),
    ],
)
def test_from_dict_rejects_what_we_cannot_run(key, value):
    d = _base_dict()
    d[key] = value
    with pytest.raises(ValueError, match=key if not key.startswith("_") else "_class_name"):
        UNetConfig.from_dict(d)


@pytest.mark.parametrize(
    "key, value", [("layers_per_block", "2"), ("addition_time_embed_dim", None), ("cross_attention_dim", 64.0)]
)
def test_from_dict_type_errors_name_the_key(key, value):
    d = _base_dict()
    d[key] = value
    with pytest.raises(TypeError, match=key):
        UNetConfig.from_dict(d)


def test_from_dict_accepts_neutral_and_metadata_keys():
    d = dict(
        _base_dict(),
        some_new_key=None,
        other_new_flag=False,
        upcast_attention=None,
        only_cross_attention=[False, False],
        dropout=0.1,
        _name_or_path="x",
        _diffusers_version="0.19.0",
    )
    assert UNetConfig.from_dict(d) == UNetConfig.from_dict(_base_dict())
    with pytest.raises(TypeError, match="dict"):
        UNetConfig.from_dict([("in_channels", 4)])


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)], ids=["bf16", "fp16"])
def test_half_precision_forward_runs_and_stays_close(dtype, tol):
    """Against diffusers in fp32: bf16 keeps ~3 significant digits (measured ~1e-2), fp16 ~4 (measured ~1e-3)."""
    ref, ours = diffusers_unet("base"), our_unet("base").to(dtype)
    x = inputs("base")
    with torch.no_grad():
        expected = ref(timestep=torch.tensor([10.0, 981.0]), **x).sample
        x16 = {
            "sample": x["sample"].to(dtype),
            "encoder_hidden_states": x["encoder_hidden_states"].to(dtype),
            "added_cond_kwargs": {
                "text_embeds": x["added_cond_kwargs"]["text_embeds"].to(dtype),
                "time_ids": x["added_cond_kwargs"]["time_ids"],  # fp32 ids, as pipelines may pass
            },
        }
        actual = ours(timestep=torch.tensor([10.0, 981.0]), **x16).sample
    assert actual.dtype == dtype
    assert torch.isfinite(actual).all()
    assert rel_err(expected, actual) < tol


def test_compile_fullgraph_traces_without_breaks():
    """fullgraph=True fails on any graph break; the eager backend checks that without inductor's compile time."""
    ours = our_unet("base")
    x = inputs("base")
    t = torch.tensor([10.0, 981.0])
    with torch.no_grad():
        expected = ours(timestep=t, **x).sample
        torch._dynamo.reset()
        compiled = torch.compile(ours, fullgraph=True, backend="eager")
        actual = compiled(timestep=t, **x, return_dict=False)[0]
    assert torch.equal(expected, actual)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    ours = our_unet("base")
    x = inputs("base")
    t = torch.tensor([10.0, 981.0])
    with torch.no_grad():
        expected = ours(timestep=t, **x).sample
        torch._dynamo.reset()
        start = time.perf_counter()
        actual = torch.compile(ours, fullgraph=True)(timestep=t, **x, return_dict=False)[0]
        print(f"inductor compile + first call: {time.perf_counter() - start:.1f} s")
    assert rel_err(expected, actual) < 1e-5


# --- full size (slow) ---------------------------------------------------------------------------------------------

SDXL_BASE_PARAMETERS = 2_567_463_684  # the official stabilityai/stable-diffusion-xl-base-1.0 UNet


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["sdxl_base", "sdxl_refiner", "sdxl_inpaint"])
def test_full_size_presets_match_diffusers_architecture(preset):
    from diffusers import UNet2DConditionModel as DiffusersUNet

    config = getattr(UNetConfig, preset)()
    with torch.device("meta"):
        theirs = DiffusersUNet.from_config(config.to_dict())
        ours = UNet2DConditionModel(config)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    if preset == "sdxl_base":
        assert ours.num_parameters() == SDXL_BASE_PARAMETERS
    print(f"{preset}: {ours.num_parameters():,} parameters")


@pytest.mark.slow
def test_full_size_base_forward_matches_diffusers():
    """Random full-size weights, one state dict shared by both models (about 10.5 GB peak), a 16x16 latent."""
    from diffusers import UNet2DConditionModel as DiffusersUNet

    config = UNetConfig.sdxl_base()
    torch.manual_seed(0)
    theirs = DiffusersUNet.from_config(config.to_dict()).eval()
    theirs.set_default_attn_processor()
    with torch.device("meta"):
        ours = UNet2DConditionModel(config)
    state = theirs.state_dict()
    ours.load_state_dict(state, strict=True, assign=True)
    assert all(ours.state_dict()[k].data_ptr() == v.data_ptr() for k, v in state.items())  # shared, not copied
    del state
    g = torch.Generator().manual_seed(0)
    x = {
        "sample": torch.randn(1, 4, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, 77, 2048, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(1, 1280, generator=g),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]),
        },
    }
    with torch.no_grad():
        expected = theirs(timestep=torch.tensor(500.0), **x).sample
        actual = ours.eval()(timestep=torch.tensor(500.0), **x).sample
    err = rel_err(expected, actual)
    print(f"full-size SDXL base, fp32, 16x16 latent: relative error {err:.2e}")
    assert err < 1e-4


def test_dataclass_replace_builds_a_tiny_unet():
    """A tiny `dataclasses.replace` of a preset builds and runs (style rule 1: dimensions only from the config)."""
    config = dataclasses.replace(
        UNetConfig.sdxl_refiner(),
        block_out_channels=(16, 32, 32, 32),
        norm_num_groups=4,
        attention_head_dim=2,
        transformer_layers_per_block=1,
        cross_attention_dim=8,
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 5 * 4,
    )
    ours = UNet2DConditionModel(config).eval()
    with torch.no_grad():
        out = ours(
            torch.randn(1, 4, 16, 16),
            10,
            torch.randn(1, 3, 8),
            text_embeds=torch.randn(1, 8),
            time_ids=torch.ones(1, 5),
        ).sample
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
