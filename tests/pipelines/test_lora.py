"""LoRA on the pipelines: the same images as diffusers + peft on the same kohya and PEFT files (2.5/255)."""

from __future__ import annotations

import json

import lora_files
import numpy as np
import pytest
import torch
from pipeline_parity import assert_changes, call, load_ours, load_theirs, to_numpy
from safetensors.torch import save_file

from sdxl.models.lora import LoraConv2d, LoraLinear

LORA_TOL = 2.5 / 255


@pytest.fixture(scope="module")
def pair(tiny_base):
    """(ours, theirs) loaded from the tiny base (theirs: to build the PEFT files with its module names)."""
    return load_ours("StableDiffusionXLPipeline", tiny_base[0]), load_theirs("StableDiffusionXLPipeline", tiny_base[0])


@pytest.fixture
def pipes(pair, tiny_base):
    """(ours, theirs) with no adapters. diffusers' pipeline is a fresh one each test: after set_adapters with two
    adapters and unload_lora_weights, diffusers 0.42 (transformers 5 text encoders) keeps a stale text-encoder LoRA
    scaling into the next load."""
    ours = pair[0]
    yield ours, load_theirs("StableDiffusionXLPipeline", tiny_base[0])
    ours.unfuse_lora()
    ours.unload_lora_weights()


@pytest.fixture(scope="module")
def files(pair, tmp_path_factory):
    """Paths of the test LoRA files, built from the tiny models."""
    ours, theirs = pair
    folder = tmp_path_factory.mktemp("loras")
    encoders = {"lora_te1": ours.text_encoder, "lora_te2": ours.text_encoder_2}
    made = {
        "kohya": lora_files.kohya_lora(ours.unet, encoders),
        "kohya_diffusers_names": lora_files.kohya_lora(ours.unet, encoders, sgm=False),
        "peft": lora_files.peft_lora(
            {"unet": theirs.unet, "text_encoder": theirs.text_encoder, "text_encoder_2": theirs.text_encoder_2}
        ),
        "peft_unet": lora_files.peft_lora({"unet": theirs.unet}, seed=3),
        "loha": lora_files.lycoris(ours.unet, "loha"),
        "lokr": lora_files.lycoris(ours.unet, "lokr"),
    }
    paths = {}
    for name, sd in made.items():
        paths[name] = folder / f"{name}.safetensors"
        save_file(sd, paths[name])
    return paths


def both(pipes, method, *args, **kwargs):
    for pipe in pipes:
        getattr(pipe, method)(*args, **kwargs)


def assert_close(a, b, tol=LORA_TOL):
    diff = np.abs(to_numpy(a) - to_numpy(b)).max()
    assert diff <= tol, f"max difference {diff * 255:.3f}/255"


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_kohya_matches_diffusers(pipes, files, weight):
    ours, theirs = pipes
    baseline = call(ours)
    both(pipes, "load_lora_weights", files["kohya"], adapter_name="k")
    both(pipes, "set_adapters", ["k"], [weight])
    image = call(ours)
    assert_close(image, call(theirs))
    assert_changes(image, baseline)


def test_kohya_changes_both_text_encoders(pipes, files):
    ours, _ = pipes
    before = ours.encode_prompt("a cat", do_classifier_free_guidance=False)
    ours.load_lora_weights(files["kohya"])
    after = ours.encode_prompt("a cat", do_classifier_free_guidance=False)
    context_dim = ours.text_encoder.config.hidden_size
    assert not torch.allclose(before[0][..., :context_dim], after[0][..., :context_dim])  # text_encoder
    assert not torch.allclose(before[2], after[2])  # pooled: text_encoder_2


def test_kohya_diffusers_unet_names_read_the_same(pipes, files):
    ours, _ = pipes
    ours.load_lora_weights(files["kohya"], adapter_name="sgm")
    sgm = call(ours)
    ours.unload_lora_weights()
    ours.load_lora_weights(files["kohya_diffusers_names"], adapter_name="diffusers")
    np.testing.assert_array_equal(call(ours), sgm)


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_peft_matches_diffusers(pipes, files, weight):
    ours, theirs = pipes
    both(pipes, "load_lora_weights", files["peft"])
    both(pipes, "set_adapters", "default_0", weight)
    assert_close(call(ours), call(theirs))


def test_two_adapters_at_once_and_scale(pipes, files):
    ours, theirs = pipes
    both(pipes, "load_lora_weights", files["kohya"], adapter_name="k")
    both(pipes, "load_lora_weights", files["peft_unet"], adapter_name="p")
    # the newest adapter alone is active where it was loaded (the UNet); "k" stays on in the text encoders
    assert ours.get_active_adapters() == ["k", "p"]
    assert_close(call(ours), call(theirs))
    both(pipes, "set_adapters", ["k", "p"], [0.5, 1.0])
    two = call(ours)
    assert_close(two, call(theirs))
    assert_changes(two, call(ours, cross_attention_kwargs={"scale": 0.3}))
    assert_close(call(ours, cross_attention_kwargs={"scale": 0.3}), call(theirs, cross_attention_kwargs={"scale": 0.3}))
    assert ours.get_list_adapters() == {"unet": ["k", "p"], "text_encoder": ["k"], "text_encoder_2": ["k"]}


def test_fused_matches_diffusers_and_unfuses_to_the_exact_bytes(pipes, files):
    ours, theirs = pipes
    components = ("unet", "text_encoder", "text_encoder_2")
    before = {c: {k: v.clone() for k, v in getattr(ours, c).state_dict().items()} for c in components}
    both(pipes, "load_lora_weights", files["kohya"], adapter_name="k")
    both(pipes, "load_lora_weights", files["peft_unet"], adapter_name="p")
    both(pipes, "set_adapters", ["k", "p"], [1.0, 0.5])
    unfused = call(ours)
    both(pipes, "fuse_lora", lora_scale=0.7)
    fused = call(ours)
    assert_close(fused, call(theirs))
    assert_changes(fused, unfused)
    ours.unfuse_lora()
    np.testing.assert_allclose(call(ours), unfused, atol=1e-6)
    for component, sd in before.items():
        now = getattr(ours, component).state_dict()
        assert now.keys() == sd.keys()
        assert all(torch.equal(now[k], sd[k]) for k in sd), component
    # fuse, then unload: the LoRA stays baked into the weights, as in diffusers
    ours.fuse_lora(lora_scale=0.7)
    both(pipes, "unload_lora_weights")
    assert not any(isinstance(m, (LoraLinear, LoraConv2d)) for m in ours.unet.modules())
    assert_close(call(ours), fused, tol=1e-6)
    assert_close(call(ours), call(theirs))
    for component in components:  # put the original weights back for the next tests
        getattr(ours, component).load_state_dict(before[component])


def test_disable_enable_unload(pipes, files):
    ours, _ = pipes
    plain_keys = list(ours.unet.state_dict())
    baseline = call(ours)
    both(pipes, "load_lora_weights", files["kohya"])
    on = call(ours)
    ours.disable_lora()
    np.testing.assert_array_equal(call(ours), baseline)
    ours.enable_lora()
    np.testing.assert_array_equal(call(ours), on)
    assert list(ours.unet.state_dict()) == plain_keys  # adapters never show up in the state dict
    ours.unload_lora_weights()
    assert not any(isinstance(m, (LoraLinear, LoraConv2d)) for m in ours.unet.modules())
    assert ours.get_active_adapters() == [] and ours.get_list_adapters() == {}
    np.testing.assert_array_equal(call(ours), baseline)


def test_delete_one_adapter(pipes, files):
    ours, _ = pipes
    ours.load_lora_weights(files["kohya"], adapter_name="k")
    only_k = call(ours)
    ours.load_lora_weights(files["peft_unet"], adapter_name="p")
    ours.delete_adapters("p")
    ours.set_adapters("k")
    np.testing.assert_array_equal(call(ours), only_k)


def test_adapter_metadata_alpha_matches_diffusers(pipes, files, tmp_path):
    from safetensors.torch import load_file

    ours, theirs = pipes
    path = tmp_path / "alpha.safetensors"
    meta = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q"], "alpha_pattern": {}, "rank_pattern": {}}
    sd = {k: v for k, v in load_file(files["peft_unet"]).items() if ".to_q." in k}
    save_file(sd, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(
        {f"unet.{k}": v for k, v in meta.items()})})
    both(pipes, "load_lora_weights", path)
    assert_close(call(ours), call(theirs))


def test_img2img_takes_the_scale(pipes, files, tiny_base):
    from sdxl import StableDiffusionXLImg2ImgPipeline

    ours, theirs = pipes
    both(pipes, "load_lora_weights", files["kohya"])
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours_i2i = StableDiffusionXLImg2ImgPipeline.from_pipe(ours)
    import diffusers

    theirs_i2i = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(theirs)
    kwargs = {"prompt": "a cat", "image": image, "strength": 0.8, "num_inference_steps": 3, "output_type": "np",
              "cross_attention_kwargs": {"scale": 0.5}}
    ours_image = ours_i2i(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert_close(ours_image, theirs_i2i(**kwargs, generator=torch.Generator().manual_seed(0)).images)


def test_encode_prompt_lora_scale_matches_diffusers(pipes, files):
    ours, theirs = pipes
    both(pipes, "load_lora_weights", files["kohya"])
    kwargs = {"prompt": "a cat", "device": torch.device("cpu"), "num_images_per_prompt": 1,
              "do_classifier_free_guidance": False}
    mine = ours.encode_prompt(**kwargs, lora_scale=0.5)
    reference = theirs.encode_prompt(**kwargs, lora_scale=0.5)
    full = ours.encode_prompt(**kwargs)
    for a, b in ((mine[0], reference[0]), (mine[2], reference[2])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine[0], full[0])


def test_safe_fusing_refuses_non_finite_weights(pipes, files):
    from safetensors.torch import load_file

    ours, _ = pipes
    sd = load_file(files["peft_unet"])
    key = next(k for k in sd if k.endswith("lora_B.weight"))
    sd[key] = torch.full_like(sd[key], float("inf"))
    ours.load_lora_weights(sd)
    before = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite"):
        ours.fuse_lora(safe_fusing=True)
    assert all(torch.equal(v, before[k]) for k, v in ours.unet.state_dict().items())
