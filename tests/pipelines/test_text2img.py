"""End-to-end parity of sdxl.StableDiffusionXLPipeline with diffusers' on the tiny checkpoint (fp32, CPU).

Every argument test also checks that the argument moves diffusers' image by more than the tolerance, so a pipeline
that ignored it would fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_parity import (
    SIZE,
    STEPS,
    assert_changes,
    assert_images_match,
    call,
    to_numpy,
)

import sdxl


@pytest.fixture(scope="module")
def baseline(theirs):
    """diffusers' image with every argument at its default (np)."""
    return call(theirs)


def check(ours, theirs, baseline=None, **kwargs):
    mine, ref = call(ours, **kwargs), call(theirs, **kwargs)
    assert_images_match(mine, ref)
    if baseline is not None:
        assert_changes(ref, baseline)
    return mine, ref


def test_our_components_are_ours(ours):
    """The parity below is of our own models, tokenizers and scheduler, not diffusers' or transformers'."""
    modules = {name: type(c).__module__ for name, c in ours.components.items() if c is not None}
    assert all(m.startswith("sdxl.") for m in modules.values()), modules
    assert ours.image_encoder is None and ours.feature_extractor is None  # IP-Adapter parts, not in this folder


def test_default_call(ours, theirs, baseline):
    assert_images_match(call(ours), baseline)


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5, 10.0])
def test_guidance_scale(ours, theirs, baseline, guidance_scale):
    check(ours, theirs, baseline, guidance_scale=guidance_scale)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"negative_prompt": "blurry, low quality"},
        {"negative_prompt": "blurry", "negative_prompt_2": "oversaturated"},
        {"prompt_2": "an oil painting"},
        {"prompt_2": "an oil painting", "negative_prompt": "blurry", "negative_prompt_2": "dark"},
        {"clip_skip": 1},
        {"guidance_rescale": 0.7},
    ],
    ids=["negative", "negative_2", "prompt_2", "all_prompts", "clip_skip", "guidance_rescale"],
)
def test_prompt_arguments(ours, theirs, baseline, kwargs):
    check(ours, theirs, baseline, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"original_size": (128, 96)},
        {"crops_coords_top_left": (8, 16)},
        {"target_size": (32, 48)},
        {"negative_original_size": (32, 32), "negative_target_size": (64, 64)},
        {"negative_original_size": (32, 32), "negative_crops_coords_top_left": (4, 12), "negative_target_size": (48, 64)},
    ],
    ids=["original_size", "crops", "target_size", "negative_sizes", "negative_all"],
)
def test_micro_conditioning(ours, theirs, baseline, kwargs):
    check(ours, theirs, baseline, **kwargs)


def test_wide_size(ours, theirs):
    """1344x768 (width x height) scaled down by 8: 168x96."""
    mine, _ = check(ours, theirs, height=96, width=168)
    assert mine.shape == (1, 96, 168, 3)


def test_default_size_follows_unet(ours, theirs):
    """height/width None -> unet.config.sample_size * vae scale factor, as diffusers."""
    mine, _ref = check(ours, theirs, height=None, width=None)
    assert mine.shape[1:3] == (ours.unet.config.sample_size * ours.vae_scale_factor,) * 2


def test_batch_of_prompts_with_images_per_prompt(ours, theirs):
    """2 prompts x 2 images, with negatives and distinct negative micro-conditioning (diffusers interleaves those
    rows; we must too)."""
    kwargs = {
        "prompt": ["a cat", "a dog"],
        "negative_prompt": ["blurry", "dark"],
        "num_images_per_prompt": 2,
        "negative_original_size": (32, 32),
        "negative_target_size": (64, 64),
    }
    mine, _ = check(ours, theirs, **kwargs)
    assert mine.shape[0] == 4


def test_generator_list(ours, theirs):
    generators = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]
    mine = call(ours, prompt=["a cat", "a dog"], generator=generators())
    assert_images_match(mine, call(theirs, prompt=["a cat", "a dog"], generator=generators()))


def test_same_seed_same_image_alone_or_in_batch(ours):
    batch = call(ours, prompt=["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    alone = call(ours, prompt="a dog", generator=torch.Generator().manual_seed(2))
    assert_images_match(batch[1:], alone)


def test_given_latents(ours, theirs, baseline):
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(7))
    check(ours, theirs, baseline, latents=latents)


def test_given_embeds(ours, theirs, baseline):
    """prompt_embeds + pooled (and negatives) made by diffusers' encode_prompt."""
    embeds, negative, pooled, negative_pooled = theirs.encode_prompt(
        "a photo of a dog", device="cpu", negative_prompt="blurry"
    )
    check(
        ours, theirs, baseline, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative,
        pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
    )


def test_given_embeds_without_text_encoders(ours, theirs):
    """A pipeline without text encoders or tokenizers runs from embeddings alone."""
    embeds, negative, pooled, negative_pooled = theirs.encode_prompt("a dog", device="cpu", negative_prompt="dark")
    text_parts = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    bare = type(ours)(**{**ours.components, **dict.fromkeys(text_parts)})
    bare.set_progress_bar_config(disable=True)
    kwargs = {
        "prompt": None, "prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }
    assert_images_match(call(bare, **kwargs), call(theirs, **kwargs))


def test_given_embeds_without_negatives_uses_zeros(ours, theirs):
    embeds, _, pooled, _ = theirs.encode_prompt("a photo of a dog", device="cpu", do_classifier_free_guidance=False)
    check(ours, theirs, prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled)


@pytest.mark.parametrize("output_type", ["latent", "pt", "pil"])
def test_output_types(ours, theirs, output_type):
    mine, ref = check(ours, theirs, output_type=output_type)
    assert type(mine) is type(ref)
    if output_type == "pil":
        assert [image.size for image in mine] == [image.size for image in ref]
        assert [image.mode for image in mine] == [image.mode for image in ref]
    else:
        assert mine.dtype == ref.dtype and mine.shape == ref.shape


def test_return_dict_false(ours, theirs):
    kwargs = {"prompt": "a cat", "num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np"}
    mine = ours(**kwargs, generator=torch.Generator().manual_seed(0), return_dict=False)
    ref = theirs(**kwargs, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(mine, tuple) and len(mine) == 1
    assert_images_match(mine[0], ref[0])


def test_output_object(ours):
    out = ours("a cat", num_inference_steps=1, height=SIZE, width=SIZE, output_type="np")
    assert out[0] is out.images and out["images"] is out.images


def test_denoising_end_latents(ours, theirs):
    """Stop at 80% of the schedule (discrete cut), hand back latents as a refiner would take them."""
    full = call(theirs, num_inference_steps=5, output_type="latent")
    _mine, ref = check(ours, theirs, num_inference_steps=5, denoising_end=0.8, output_type="latent")
    assert_changes(ref, full)
    assert ours.num_timesteps == theirs.num_timesteps < 5


def test_callback_on_step_end_changes_latents(ours, theirs, baseline):
    seen = {"ours": [], "theirs": []}

    def callback(who):
        def fn(pipe, i, t, kwargs):
            seen[who].append((i, float(t), sorted(kwargs)))
            return {"latents": kwargs["latents"] * 0.9} if i == 0 else {}

        return fn

    mine = call(ours, callback_on_step_end=callback("ours"))
    ref = call(theirs, callback_on_step_end=callback("theirs"))
    assert_images_match(mine, ref)
    assert_changes(ref, baseline)
    assert seen["ours"] == seen["theirs"] and len(seen["ours"]) == STEPS


def test_callback_replaces_conditioning(ours, theirs):
    """All four callback tensors are offered; replacing the text conditioning takes effect for later steps."""
    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]

    def callback(pipe, i, t, kwargs):
        assert sorted(kwargs) == sorted(names)
        return {"prompt_embeds": kwargs["prompt_embeds"] * 0.5, "add_time_ids": kwargs["add_time_ids"] + 8}

    without = call(theirs, num_inference_steps=3)
    check(
        ours, theirs, without, num_inference_steps=3, callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=names,
    )


def test_call_attributes_and_interrupt(ours, theirs):
    """guidance_scale, do_classifier_free_guidance, num_timesteps, interrupt as diffusers exposes them mid-call;
    setting `_interrupt` skips the remaining steps."""
    seen = {"ours": [], "theirs": []}

    def callback(who):
        def fn(pipe, i, t, kwargs):
            seen[who].append((pipe.guidance_scale, pipe.do_classifier_free_guidance, pipe.num_timesteps, pipe.interrupt))
            pipe._interrupt = i == 1
            return {}

        return fn

    mine = call(ours, num_inference_steps=4, guidance_scale=7.0, callback_on_step_end=callback("ours"))
    ref = call(theirs, num_inference_steps=4, guidance_scale=7.0, callback_on_step_end=callback("theirs"))
    assert_images_match(mine, ref)
    assert_changes(ref, call(theirs, num_inference_steps=4, guidance_scale=7.0))
    assert seen["ours"] == seen["theirs"] == [(7.0, True, 4, False), (7.0, True, 4, False)]


def test_dpm_solver_from_config(ours, theirs):
    """The seed notebooks' scheduler swap: X.from_config(pipe.scheduler.config)."""
    import diffusers

    euler = call(theirs, num_inference_steps=4)
    ours_before, theirs_before = ours.scheduler, theirs.scheduler
    try:
        ours.scheduler = sdxl.DPMSolverMultistepScheduler.from_config(ours.scheduler.config)
        theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
        assert ours.components["scheduler"] is ours.scheduler
        check(ours, theirs, euler, num_inference_steps=4)
    finally:
        ours.scheduler, theirs.scheduler = ours_before, theirs_before


def test_eta_is_accepted(ours, theirs, baseline):
    """eta goes to schedulers whose step takes it; Euler's does not, so it changes nothing (as in diffusers)."""
    mine = call(ours, eta=0.5)
    assert_images_match(mine, call(theirs, eta=0.5))
    assert_images_match(mine, baseline)


def test_fp16_vae_decodes_in_fp32_and_stays_fp16(ours, theirs):
    """force_upcast: an fp16 VAE decodes in fp32 (fp16 would be off by ~1e-3 here), then is cast back."""
    ours.vae.to(torch.float16)
    theirs.vae.to(torch.float16)
    try:
        mine, ref = call(ours), call(theirs)
        assert ours.vae.dtype == theirs.vae.dtype == torch.float16
        assert not any(p.is_inference() for p in ours.vae.parameters())  # still ordinary, trainable weights
    finally:
        ours.vae.to(torch.float32)
        theirs.vae.to(torch.float32)
    assert_images_match(mine, ref)


def test_pil_pixels(ours, theirs):
    mine, ref = call(ours, output_type="pil"), call(theirs, output_type="pil")
    assert np.array_equal(to_numpy(mine).shape, to_numpy(ref).shape)
    assert_images_match(mine, ref)


def test_diffusers_cfg_cutoff_callback(ours, theirs, baseline):
    """A diffusers PipelineCallback object: its own tensor_inputs, and it turns guidance off mid-call."""
    from diffusers.callbacks import SDXLCFGCutoffCallback

    kwargs = {"num_inference_steps": 4, "callback_on_step_end": SDXLCFGCutoffCallback(cutoff_step_ratio=0.5)}
    _mine, _ref = check(ours, theirs, baseline, **kwargs)
    assert not ours.do_classifier_free_guidance and not theirs.do_classifier_free_guidance


@pytest.mark.parametrize(
    "kwargs", [{"timesteps": [999.0, 650.0, 200.0]}, {"sigmas": [14.6, 4.0, 0.8, 0.0]}], ids=["timesteps", "sigmas"]
)
def test_custom_schedule(ours, theirs, kwargs):
    without = call(theirs, num_inference_steps=3)
    _mine, _ref = check(ours, theirs, without, **kwargs)
    assert ours.num_timesteps == theirs.num_timesteps == 3
