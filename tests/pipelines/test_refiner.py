"""The SDXL refiner both ways, against diffusers on the tiny base and refiner checkpoints (fp32, CPU).

- ensemble of experts: base `denoising_end=f, output_type="latent"`, then refiner `denoising_start=f, image=latents`
  (f = 0.9, 0.8, 0.6; Euler and the 2nd-order Heun and KDPM2 schedulers);
- base then refiner: the base's finished image (PIL, or its latents) refined by img2img;
- the refiner's aesthetic-score micro-conditioning, and components shared between pipelines without copies.
"""

from __future__ import annotations

import diffusers
import img2img_fixtures as fx
import pytest
import torch
from img2img_fixtures import i2i_call
from pipeline_parity import assert_changes, assert_images_match

import sdxl.schedulers.base as schedulers
from sdxl.pipelines.img2img import StableDiffusionXLImg2ImgPipeline

PROMPT = "A majestic lion jumping from a big stone at night"
STEPS = 10

# the session fixtures of img2img_fixtures, registered in this module
ours_refiner, theirs_refiner = fx.ours_refiner, fx.theirs_refiner


@pytest.fixture(scope="module")
def refiner_baseline(theirs_refiner):
    return i2i_call(theirs_refiner)


def test_refiner_loads_without_the_first_text_encoder(ours_refiner, tiny_refiner):
    assert ours_refiner.text_encoder is None and ours_refiner.tokenizer is None
    assert ours_refiner.text_encoder_2 is not None and ours_refiner.tokenizer_2 is not None
    assert ours_refiner.config.requires_aesthetics_score is True  # from model_index.json
    assert ours_refiner.config.force_zeros_for_empty_prompt is False
    modules = {n: type(c).__module__ for n, c in ours_refiner.components.items() if c is not None}
    assert all(m.startswith("sdxl.") for m in modules.values()), modules


def test_refiner_img2img(ours_refiner, refiner_baseline):
    assert_images_match(i2i_call(ours_refiner), refiner_baseline)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aesthetic_score": 9.0},
        {"negative_aesthetic_score": 0.5},
        {"aesthetic_score": 3.0, "negative_aesthetic_score": 7.0},
        {"strength": 0.8},
        {"negative_prompt": "blurry"},
        {"prompt_2": "ignored by the refiner", "strength": 0.31},  # the refiner reads `prompt` only
        {"original_size": (128, 128)},
        {"negative_original_size": (16, 16)},
        {"negative_crops_coords_top_left": (8, 8)},  # used in the refiner layout (unlike the base layout)
    ],
    ids=lambda k: "-".join(map(str, k)),
)
def test_refiner_arguments(ours_refiner, theirs_refiner, refiner_baseline, kwargs):
    mine, ref = i2i_call(ours_refiner, **kwargs), i2i_call(theirs_refiner, **kwargs)
    assert_images_match(mine, ref)
    if "prompt_2" in kwargs:
        assert_images_match(ref, i2i_call(theirs_refiner, strength=0.31))
    else:
        assert_changes(ref, refiner_baseline)


def _with_scheduler(pipe, name):
    """`pipe`'s class on the same components, with scheduler `name` (from_config of the pipe's own)."""
    if name is None:
        return pipe
    if type(pipe).__module__.startswith("sdxl."):
        scheduler = schedulers.scheduler_class(name).from_config(pipe.scheduler.config)
        new = type(pipe)(**{**pipe.components, "scheduler": scheduler}, **_options(pipe))
    else:
        scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
        keys = ("requires_aesthetics_score", "force_zeros_for_empty_prompt")
        options = {k: pipe.config[k] for k in keys if k in pipe.config}
        new = type(pipe)(**{**pipe.components, "scheduler": scheduler}, add_watermarker=False, **options)
    new.set_progress_bar_config(disable=True)
    return new


def _options(pipe):
    return {k: v for k, v in pipe.config.items() if k in type(pipe)._init_options}


def _ensemble(base, refiner, f, **kwargs):
    """The guide's ensemble of expert denoisers: (base latents, refined np image, refiner's step timesteps)."""
    latents = base(
        prompt=PROMPT, num_inference_steps=STEPS, denoising_end=f, output_type="latent", height=64, width=64,
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images
    steps = []

    def record(pipe, i, t, tensors):
        steps.append(float(t))
        return {}

    image = refiner(
        prompt=PROMPT, num_inference_steps=STEPS, denoising_start=f, image=latents, output_type="np",
        generator=torch.Generator().manual_seed(1), callback_on_step_end=record,
    ).images
    return latents, image, steps


@pytest.mark.parametrize(
    ("f", "scheduler"),
    [(f, s) for s in (None, "HeunDiscreteScheduler") for f in (0.9, 0.8, 0.6)] + [(0.8, "KDPM2DiscreteScheduler")],
    ids=str,
)
def test_ensemble_of_experts(ours, theirs, ours_refiner, theirs_refiner, f, scheduler):
    """Same hand-off latents, same refiner timesteps (the 2nd-order +1 rule included), same image."""
    mine_base, mine_refiner = _with_scheduler(ours, scheduler), _with_scheduler(ours_refiner, scheduler)
    ref_base, ref_refiner = _with_scheduler(theirs, scheduler), _with_scheduler(theirs_refiner, scheduler)
    mine_latents, mine, mine_steps = _ensemble(mine_base, mine_refiner, f)
    ref_latents, ref, ref_steps = _ensemble(ref_base, ref_refiner, f)
    torch.testing.assert_close(mine_latents, ref_latents, atol=1e-4, rtol=0)
    assert mine_steps == ref_steps and len(ref_steps) >= 1
    assert_images_match(mine, ref)


def test_ensemble_fractions_differ(theirs, theirs_refiner):
    """f moves the hand-off (so the sweep above tests three different splits)."""
    _, a, _ = _ensemble(theirs, theirs_refiner, 0.9)
    _, b, _ = _ensemble(theirs, theirs_refiner, 0.6)
    assert_changes(a, b)


@pytest.mark.parametrize("strength", [0.3, 0.5])
def test_base_then_refiner(ours, theirs, ours_refiner, theirs_refiner, strength):
    """The base's finished PIL image refined by img2img (the guide's second way)."""

    def run(base, refiner):
        image = base(prompt=PROMPT, num_inference_steps=4, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
        refined = i2i_call(refiner, prompt=PROMPT, image=image, strength=strength, output_type="pil")
        return image, refined

    mine_image, mine = run(ours, ours_refiner)
    ref_image, ref = run(theirs, theirs_refiner)
    assert_images_match([mine_image], [ref_image])
    assert_images_match(mine, ref)
    assert_changes(ref, [ref_image])


def test_base_latents_then_refiner(ours, theirs, ours_refiner, theirs_refiner):
    """The guide's cell: `image = base(prompt, output_type="latent").images[0]; refiner(prompt, image=image[None])`."""

    def run(base, refiner):
        image = base(prompt=PROMPT, num_inference_steps=4, height=64, width=64, output_type="latent",
                     generator=torch.Generator().manual_seed(0)).images[0]
        return i2i_call(refiner, prompt=PROMPT, image=image[None, :])

    ref = run(theirs, theirs_refiner)
    assert_images_match(run(ours, ours_refiner), ref)


def test_sharing_components(ours, theirs, tiny_refiner):
    """`from_pretrained(refiner, text_encoder_2=base.text_encoder_2, vae=base.vae, scheduler=base.scheduler)` uses
    the very objects (no copy), and runs as diffusers' refiner built the same way."""
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_refiner[0], text_encoder_2=ours.text_encoder_2, vae=ours.vae, scheduler=ours.scheduler,
        torch_dtype=torch.float32,
    )
    assert refiner.text_encoder_2 is ours.text_encoder_2
    assert refiner.vae is ours.vae
    assert refiner.scheduler is ours.scheduler
    same_storage = {p.data_ptr() for p in ours.vae.parameters()} == {p.data_ptr() for p in refiner.vae.parameters()}
    assert same_storage
    refiner.set_progress_bar_config(disable=True)
    reference = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_refiner[0], text_encoder_2=theirs.text_encoder_2, vae=theirs.vae, scheduler=theirs.scheduler,
        add_watermarker=False,
    )
    reference.set_progress_bar_config(disable=True)
    assert_images_match(i2i_call(refiner, strength=0.6), i2i_call(reference, strength=0.6))


def test_save_pretrained_round_trip(ours_refiner, tmp_path):
    """Our refiner's folder keeps the options diffusers reads (requires_aesthetics_score, no text_encoder)."""
    folder = ours_refiner.save_pretrained(tmp_path / "refiner") or tmp_path / "refiner"
    reloaded = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, add_watermarker=False)
    assert reloaded.config.requires_aesthetics_score is True
    assert reloaded.config.force_zeros_for_empty_prompt is False
    assert reloaded.text_encoder is None and reloaded.tokenizer is None
    ours_again = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
    assert ours_again.config.requires_aesthetics_score is True


@pytest.mark.slow
def test_fp16_ensemble_and_img2img(tiny_base, tiny_refiner):
    """fp16 on CPU (slow: ~45 s), the guide's setup: the refiner shares the base's text_encoder_2 and VAE."""
    import sdxl

    kwargs = {"torch_dtype": torch.float16}
    ref_base = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], add_watermarker=False, **kwargs)
    mine_base = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], **kwargs)
    ref_refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_refiner[0], text_encoder_2=ref_base.text_encoder_2, vae=ref_base.vae, add_watermarker=False, **kwargs
    )
    mine_refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_refiner[0], text_encoder_2=mine_base.text_encoder_2, vae=mine_base.vae, **kwargs
    )
    for pipe in (ref_base, mine_base, ref_refiner, mine_refiner):
        pipe.set_progress_bar_config(disable=True)
    _, mine, _ = _ensemble(mine_base, mine_refiner, 0.8)
    _, ref, _ = _ensemble(ref_base, ref_refiner, 0.8)
    assert_images_match((mine * 255).round().astype("uint8"), (ref * 255).round().astype("uint8"))
    mine, ref = i2i_call(mine_refiner, strength=0.6), i2i_call(ref_refiner, strength=0.6)
    assert_images_match((mine * 255).round().astype("uint8"), (ref * 255).round().astype("uint8"))
    assert mine_base.vae.dtype == torch.float16
