"""Memory options on the pipeline: model/sequential CPU offload (our hooks), VAE tiling/slicing, and the accepted
no-op switches (xformers, attention slicing).

This machine has no accelerator: the error path is tested as such, and the hook logic runs with the CPU standing in
for the accelerator (`_enable_model_offload("cpu")`), checked through the recorded moves. The sequential hooks' move
and restore is checked with the meta device as the "accelerator" on a small module (the CPU weights are kept aside,
so nothing is lost). Real GPU runs and memory figures are benchmarks (benchmarks/), run on a lent GPU.
"""

from __future__ import annotations

import collections
import logging

import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call

from sdxl.pipelines.offload import ModelOffload, SequentialOffload, detect_accelerator, to_device
from sdxl.pipelines.text2img import StableDiffusionXLPipeline

NO_ACCELERATOR = detect_accelerator() is None
SEQUENCE = ["text_encoder", "text_encoder_2", "unet", "vae"]


@pytest.fixture
def fresh(tiny_base):
    """A pipeline of our own (hooks are installed on its modules), with our session image as reference."""
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    pipe.remove_all_hooks()


# ---- no accelerator: clear errors ----------------------------------------------------------------------------------


@pytest.mark.skipif(not NO_ACCELERATOR, reason="this machine has an accelerator")
@pytest.mark.parametrize("method", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_no_accelerator_is_a_runtime_error_as_diffusers(ours, method):
    with pytest.raises(RuntimeError, match=f"`{method}` requires an accelerator"):
        getattr(ours, method)()
    with pytest.raises(RuntimeError, match="no cuda device is available"):
        getattr(ours, method)(device="cuda")
    assert getattr(ours, "_offload", None) is None


def test_bad_offload_devices(ours):
    with pytest.raises(ValueError, match="device='cpu'"):
        ours.enable_model_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="both gpu_id=0 and the index"):
        ours.enable_model_cpu_offload(gpu_id=0, device="cuda:1")


# ---- model offload ------------------------------------------------------------------------------------------------


def test_model_offload_order_and_image(fresh, ours):
    """One model at a time, in the order they run; each onload preceded by the previous model's offload."""
    expected = call(ours)
    fresh._enable_model_offload("cpu")
    moves = fresh._offload.moves
    images = call(fresh)
    assert_images_match(images, expected)
    # no negative prompt and force_zeros: each text encoder runs once
    want = []
    for i, name in enumerate(SEQUENCE):
        if i:
            want.append((SEQUENCE[i - 1], "offload"))
        want.append((name, "onload"))
    # the call ends with maybe_free_model_hooks(), as diffusers': the VAE goes back too
    assert list(moves) == [*want, ("vae", "offload")]
    assert fresh._offload.resident is None
    # a second call starts over from the text encoder
    moves.clear()
    call(fresh)
    assert list(moves)[:2] == [("text_encoder", "onload"), ("text_encoder", "offload")]


def test_model_offload_moves_to_the_right_devices(fresh):
    """Each model's `.to` gets the accelerator on onload and the CPU on offload (recorded on the instances)."""
    fresh._enable_model_offload("cpu")
    offload = fresh._offload
    offload.device = torch.device("cpu", 0)  # a distinguishable spelling of the stand-in accelerator
    calls = []
    for name, model in offload.models.items():
        original = model.to

        def recording_to(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, str(args[0] if args else kwargs.get("device"))))
            return _original(*args, **kwargs)

        model.to = recording_to
    try:
        call(fresh, negative_prompt="blurry")  # a negative prompt: the encoders run twice each
    finally:
        for model in offload.models.values():
            del model.to
    onloads = [n for n, d in calls if d == "cpu:0"]
    offloads = [n for n, d in calls if d == "cpu"]
    assert onloads == ["text_encoder", "text_encoder_2", "text_encoder", "text_encoder_2", "unet", "vae"]
    assert offloads == onloads  # the last (vae) by the call's closing maybe_free_model_hooks()
    assert len(calls) == len(onloads) + len(offloads)


def test_device_reports_the_accelerator(fresh):
    fresh._enable_model_offload("cpu")
    fresh._offload.device = torch.device("cuda", 0)  # not run: only what the pipeline reports
    assert fresh.device == torch.device("cuda", 0)
    assert fresh._execution_device == torch.device("cuda", 0)
    fresh.remove_all_hooks()
    assert fresh.device == torch.device("cpu")


def test_remove_all_hooks(fresh, ours):
    fresh._enable_model_offload("cpu")
    fresh.remove_all_hooks()
    for model in (fresh.text_encoder, fresh.text_encoder_2, fresh.unet, fresh.vae):
        assert not model._forward_pre_hooks
    assert "decode" not in fresh.vae.__dict__ and "encode" not in fresh.vae.__dict__
    assert_images_match(call(fresh), call(ours))


def test_to_after_offload_removes_the_hooks(fresh, caplog):
    fresh._enable_model_offload("cpu")
    with caplog.at_level(logging.WARNING, logger="sdxl.pipelines"):
        fresh.to("cpu")
    assert "memory savings are lost" in caplog.text
    assert fresh._offload is None and not fresh.unet._forward_pre_hooks


def test_vae_encode_goes_through_the_hook(fresh):
    """img2img/inpaint call `vae.encode` (not forward): it onloads the VAE too."""
    fresh._enable_model_offload("cpu")
    with torch.no_grad():
        fresh.vae.encode(torch.zeros(1, 3, 16, 16))
    assert list(fresh._offload.moves) == [("vae", "onload")]


def test_to_device_nested():
    Pair = collections.namedtuple("Pair", "a b")
    moved = to_device({"x": [torch.zeros(1), (torch.ones(1), 3)], "p": Pair(torch.zeros(1), "s")}, "meta")
    assert moved["x"][0].device.type == "meta" and moved["x"][1][0].device.type == "meta"
    assert moved["x"][1][1] == 3 and isinstance(moved["p"], Pair) and moved["p"].b == "s"
    assert moved["p"].a.device.type == "meta"


def test_moves_inside_inference_mode_make_plain_tensors():
    """Weights moved during a call (inference mode) must not become inference tensors, which would refuse later
    in-place updates such as load_state_dict: the moves run with inference mode off."""
    model = torch.nn.Linear(2, 2)
    offload = ModelOffload({"m": model}, "cpu")
    offload.device = torch.device("meta")  # a real move, to a device where nothing is computed
    with torch.inference_mode():
        offload.onload("m")
        assert model.weight.device.type == "meta" and not model.weight.is_inference()
    offload.remove()

    seq_model = torch.nn.Linear(2, 2)
    seen = []
    seq_model.register_forward_hook(lambda m, args, out: seen.append(m.weight.is_inference()))
    seq = SequentialOffload({"m": seq_model}, "meta")
    with torch.inference_mode():
        seq_model(torch.zeros(1, 2))
    assert seen == [False]
    seq.remove()
    seq_model.load_state_dict({"weight": torch.ones(2, 2), "bias": torch.ones(2)})  # in place: still allowed


# ---- sequential offload -------------------------------------------------------------------------------------------


def test_sequential_offload_moves_weights_for_each_forward_only():
    """With meta as the stand-in accelerator: the forward runs there, the CPU weights come back untouched."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 2))
    model.register_buffer("scale", torch.ones(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    seen = []
    model[2].register_forward_hook(lambda m, args, out: seen.append(m.weight.device.type))  # runs before ours
    offload = SequentialOffload({"m": model}, "meta")
    out = model(torch.zeros(3, 4))
    assert out.device.type == "meta"
    assert seen == ["meta"]  # the weights were on the accelerator during the forward
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and v.data_ptr() == ptrs[k] and torch.equal(v, before[k]), k
    assert not any("_sdxl_cpu_tensors" in m.__dict__ for m in model.modules())
    offload.remove()
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks
    assert model(torch.zeros(3, 4)).device.type == "cpu"


def test_sequential_offload_pipeline_image(fresh, ours):
    fresh._enable_sequential_offload("cpu")
    hooked = [m for m in fresh.unet.modules() if m._forward_pre_hooks]
    assert hooked and all(next(m.parameters(recurse=False), None) is not None for m in hooked)
    assert_images_match(call(fresh), call(ours))
    with pytest.raises(ValueError, match="remove_all_hooks"):
        fresh.to("cuda")
    fresh.remove_all_hooks()
    assert not any(m._forward_pre_hooks for m in fresh.unet.modules())


# ---- VAE tiling / slicing through the pipeline ------------------------------------------------------------------


def _small_tiles(*pipes):
    for pipe in pipes:
        pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 16


def test_vae_tiling_matches_diffusers(ours, theirs):
    baseline = call(theirs)
    saved = [(p.vae.tile_sample_min_size, p.vae.tile_latent_min_size) for p in (ours, theirs)]
    _small_tiles(ours, theirs)
    ours.enable_vae_tiling()
    theirs.vae.enable_tiling()
    try:
        assert ours.vae.use_tiling
        images, ref = call(ours), call(theirs)
    finally:
        for pipe, (s, l) in zip((ours, theirs), saved):
            pipe.vae.disable_tiling()
            pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = s, l
    assert not ours.vae.use_tiling
    assert_images_match(images, ref)
    assert_changes(ref, baseline)


def test_vae_slicing_matches_diffusers(ours, theirs):
    ours.enable_vae_slicing()
    theirs.vae.enable_slicing()
    try:
        assert ours.vae.use_slicing
        assert_images_match(call(ours, num_images_per_prompt=2), call(theirs, num_images_per_prompt=2))
    finally:
        ours.disable_vae_slicing()
        theirs.vae.disable_slicing()
    assert not ours.vae.use_slicing


def test_vae_switches_need_a_vae(ours):
    no_vae = StableDiffusionXLPipeline(**{**ours.components, "vae": None})
    with pytest.raises(ValueError, match="enable_vae_tiling needs the pipeline's `vae`"):
        no_vae.enable_vae_tiling()


# ---- accepted no-ops ----------------------------------------------------------------------------------------------


def test_xformers_and_attention_slicing_are_accepted_no_ops(ours, caplog):
    before = call(ours)
    with caplog.at_level(logging.INFO, logger="sdxl.pipelines"):
        ours.enable_xformers_memory_efficient_attention()
        ours.enable_attention_slicing()
        ours.enable_attention_slicing(2)
    assert "SDPA" in caplog.text
    assert_images_match(call(ours), before)
    ours.disable_xformers_memory_efficient_attention()
    ours.disable_attention_slicing()
    with pytest.raises(ValueError, match="slice_size"):
        ours.enable_attention_slicing("half")
    with pytest.raises(TypeError, match="slice_size"):
        ours.enable_attention_slicing(0.5)


# ---- with an accelerator (run on a lent GPU machine) ----------------------------------------------------------------


def _on_accelerator(pipe) -> list[str]:
    return [n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module) and m.device.type != "cpu"]


@pytest.mark.skipif(NO_ACCELERATOR, reason="needs an accelerator")
def test_model_offload_on_the_accelerator(fresh, ours):
    expected = call(ours)
    fresh.enable_model_cpu_offload()
    assert fresh.device.type == detect_accelerator() and _on_accelerator(fresh) == []
    seen = []
    for model in (fresh.text_encoder, fresh.text_encoder_2, fresh.unet, fresh.vae):
        model.register_forward_hook(lambda m, a, o: seen.append(_on_accelerator(fresh)))  # vae: decode, no forward
    images = call(fresh)
    assert all(len(names) == 1 for names in seen), seen  # one model there at a time
    assert abs(images - expected).max() < 5 / 255  # a GPU's kernels differ from the CPU's in the low bits
    fresh.maybe_free_model_hooks()
    assert _on_accelerator(fresh) == []


@pytest.mark.skipif(NO_ACCELERATOR, reason="needs an accelerator")
def test_sequential_offload_on_the_accelerator(fresh, ours):
    expected = call(ours)
    fresh.enable_sequential_cpu_offload()
    images = call(fresh)
    assert abs(images - expected).max() < 5 / 255
    assert _on_accelerator(fresh) == []  # every weight back on the CPU after the call
