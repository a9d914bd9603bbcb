"""Hires fix, variation seeds and schedule types through `sdxl.runner.Runner`: each generation equals the same
steps done with diffusers' own pipelines on the same tiny checkpoint (fp32, CPU, 2/255)."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdxl.hires import check_sampling_params, hires_schedule, hires_size, slerp, upscale_latents, variation_noise
from sdxl.params import SCHEDULE_TYPES, UPSCALERS, GenerationParams, find_schedule, find_upscaler
from sdxl.runner import Runner
from sdxl.schedulers.schedule_types import schedule_sigmas
from sdxl.schedulers.sigmas import training_sigmas

PROMPT = "a photo of a cat"
SIZE = 64  # the tiny VAE scales by 2


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_close(ours: Image.Image, ref: Image.Image) -> None:
    assert ours.size == ref.size
    assert np.abs(pixels(ours) - pixels(ref)).max() <= 2


# --- pure pieces ---


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 30])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.7, 0.999, 1.0])
def test_hires_schedule_runs_exactly_the_hires_steps_as_a1111(steps, strength):
    total, pipe_strength = hires_schedule(steps, strength)
    assert total == int(steps / min(strength, 0.999))  # A1111's setup_img2img_steps with fixed steps
    assert min(int(total * pipe_strength), total) == steps  # what the img2img pipeline then runs


def test_hires_size_and_errors():
    assert hires_size(1024, 768, 1.5) == (1536, 1152) and hires_size(100, 60, 1.3) == (128, 72)
    with pytest.raises(ValueError, match=r"denoising strength in \(0, 1\]"):
        hires_schedule(10, 0.0)
    with pytest.raises(ValueError, match="upscales decoded images"):
        upscale_latents(torch.zeros(1, 4, 2, 2), (4, 4), find_upscaler("Lanczos"))


def test_latent_upscalers_are_a1111s_modes():
    x = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    outs = {u.name: upscale_latents(x, (8, 11), u) for u in UPSCALERS if u.space == "latent"}
    assert torch.equal(outs["Latent"], F.interpolate(x, size=(8, 11), mode="bilinear"))
    assert torch.equal(
        outs["Latent (nearest)"], x[:, :, [0, 0, 1, 1, 2, 3, 3, 4], :][..., [0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6]]
    )
    assert len({tuple(v.flatten()[:50].tolist()) for v in outs.values()}) == len(outs)  # six different resamplings


def _slerp_reference(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per (channel, column) vector over the rows: sin((1-t)W)/sin W * a + sin(tW)/sin W * b (Shoemake 1985)."""
    out = np.empty_like(low)
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            a, b = low[c, :, w], high[c, :, w]
            omega = math.acos(float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b))))
            out[c, :, w] = math.sin((1 - t) * omega) / math.sin(omega) * a + math.sin(t * omega) / math.sin(omega) * b
    return out


def test_variation_slerp_is_a1111s():
    g = torch.Generator().manual_seed(1)
    low, high = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    for t in (0.0, 0.25, 0.8, 1.0):
        np.testing.assert_allclose(
            slerp(t, low, high).numpy(), _slerp_reference(t, low.double().numpy(), high.double().numpy()), atol=1e-5
        )
    # nearly parallel noises: A1111 mixes linearly, with its weights (low * t + high * (1 - t))
    assert torch.allclose(slerp(0.2, low, low * 1.0001), low * 0.2 + low * 1.0001 * 0.8)
    rows = variation_noise((4, 6, 5), [3, 4], [9, 10], 0.0, torch.float32)
    assert torch.equal(rows[1], torch.randn((1, 4, 6, 5), generator=torch.Generator().manual_seed(4))[0])


def test_schedule_types_and_upscalers_are_a1111s_lists():
    api = [s.to_api() for s in SCHEDULE_TYPES]
    assert [(s["name"], s["label"]) for s in api] == [
        ("automatic", "Automatic"),
        ("uniform", "Uniform"),
        ("karras", "Karras"),
        ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"),
        ("simple", "Simple"),
        ("normal", "Normal"),
        ("ddim", "DDIM"),
        ("beta", "Beta"),
    ]
    assert api[5]["aliases"] == ["SGMUniform"] and api[2]["default_rho"] == 7.0 and api[0]["aliases"] is None
    assert find_schedule("sgmuniform").name == "sgm_uniform" and find_schedule("KARRAS").label == "Karras"
    assert find_schedule(None).name == "automatic"
    assert [u.name for u in UPSCALERS][:6] == [
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
    ]
    with pytest.raises(ValueError, match="unknown schedule type 'Karas'"):
        find_schedule("Karas")
    with pytest.raises(ValueError, match="unknown hires upscaler 'ESRGAN'"):
        find_upscaler("ESRGAN")


@pytest.mark.parametrize(
    ("fields", "text2img", "message"),
    [
        ({"hires_scale": 1.5}, True, r"hires fix needs denoising_strength in \(0, 1\]"),
        ({"hires_scale": 1.5, "denoising_strength": 0.5}, False, "text-to-image second pass"),
        ({"hires_scale": 9.0, "denoising_strength": 0.5}, True, "hires_scale must be between 1 and 8"),
        ({"hires_scale": 2.0, "denoising_strength": 0.5, "hires_upscaler": "ESRGAN"}, True, "unknown hires upscaler"),
        ({"hires_scale": 2.0, "denoising_strength": 0.5, "hires_steps": -1}, True, "hires_steps must be 0"),
        ({"hires_refiner_pass": "third pass"}, True, "hires_refiner_pass must be one of 'first pass', 'second"),
        ({"hires_refiner_pass": "Both passes"}, True, "'both passes' \\(got 'Both passes'\\)"),
        ({"subseed_strength": 1.5}, True, "subseed_strength must be between 0 and 1"),
        ({"subseed_strength": 0.5}, False, "variation seeds"),
        ({"subseed": -5, "subseed_strength": 0.5}, True, "subseed must be -1"),
        ({"schedule": "Karas"}, True, "unknown schedule type"),
    ],
)
def test_sampling_params_errors(fields, text2img, message):
    with pytest.raises(ValueError, match=message):
        check_sampling_params(GenerationParams(PROMPT, **fields), text2img=text2img)


# --- through the runner, against diffusers ---


@pytest.fixture(scope="module")
def runner():
    return Runner("cpu", torch.float32)


@pytest.fixture(scope="module")
def ref_pipes(tiny_base):
    text2img = diffusers.StableDiffusionXLPipeline.from_pretrained(
        tiny_base[0], torch_dtype=torch.float32, add_watermarker=False
    )
    text2img.set_progress_bar_config(disable=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(text2img)
    return text2img, img2img


def params(tiny_base, **fields) -> GenerationParams:
    base = {"steps": 3, "seed": 5, "width": SIZE, "height": SIZE, "model": str(tiny_base[0]), "sampler": "Euler"}
    return GenerationParams(PROMPT, **{**base, **fields})


def generators(seed: int, n: int = 1) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def test_schedule_type_equals_diffusers_with_those_sigmas(runner, ref_pipes, tiny_base):
    """Euler + "Karras" runs the A1111 Karras levels: diffusers' Euler given them as `sigmas=` draws the same."""
    (result,) = runner.run(params(tiny_base, schedule="karras"))
    text2img = ref_pipes[0]
    train = training_sigmas(text2img.scheduler.alphas_cumprod).numpy()
    sigmas = schedule_sigmas("karras", 3, train).tolist()
    ref = text2img(PROMPT, sigmas=sigmas, width=SIZE, height=SIZE, guidance_scale=5.0, generator=generators(5)).images[
        0
    ]
    assert_close(result.image, ref)
    assert result.params.schedule == "Karras"


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Lanczos"])
def test_hires_fix_equals_diffusers_steps(runner, ref_pipes, tiny_base, upscaler):
    """First pass, upscale, then exactly hires_steps image-to-image steps: diffusers' pipelines doing the same."""
    fields = {"hires_scale": 1.5, "hires_upscaler": upscaler, "hires_steps": 2, "denoising_strength": 0.6}
    results = runner.run(params(tiny_base, batch_size=2, **fields))
    text2img, img2img = ref_pipes
    up = find_upscaler(upscaler)
    common = {"guidance_scale": 5.0, "num_images_per_prompt": 2}
    first = text2img(
        PROMPT,
        num_inference_steps=3,
        width=SIZE,
        height=SIZE,
        generator=generators(5, 2),
        output_type="latent" if up.space == "latent" else "pil",
        **common,
    ).images
    if up.space == "latent":
        image = F.interpolate(first, size=(48, 48), mode=up.mode, antialias=up.antialias)  # 96 px / 2
    else:
        image = [i.resize((96, 96), Image.Resampling.LANCZOS) for i in first]
    total = int(2 / 0.6)  # A1111: 3 steps of which the last 2 run
    ref = img2img(
        PROMPT, image=image, num_inference_steps=total, strength=2.5 / total, generator=generators(5, 2), **common
    ).images
    for i, result in enumerate(results):
        assert result.image.size == (96, 96)
        assert_close(result.image, ref[i])
        assert (result.params.width, result.params.height, result.params.seed) == (SIZE, SIZE, 5 + i)


def test_variation_seed_equals_diffusers_with_a1111_noise(runner, ref_pipes, tiny_base):
    results = runner.run(params(tiny_base, batch_size=2, subseed=40, subseed_strength=0.3))
    latents = variation_noise((4, SIZE // 2, SIZE // 2), [5, 6], [40, 41], 0.3, torch.float32)
    ref = ref_pipes[0](
        PROMPT,
        num_inference_steps=3,
        width=SIZE,
        height=SIZE,
        guidance_scale=5.0,
        num_images_per_prompt=2,
        latents=latents,
    ).images
    for i, result in enumerate(results):
        assert_close(result.image, ref[i])
        assert (result.params.subseed, result.params.subseed_strength) == (40 + i, 0.3)
    # strength 1 is the variation seed's own image
    (full,) = runner.run(params(tiny_base, subseed=40, subseed_strength=1.0))
    (alone,) = runner.run(params(tiny_base, seed=40))
    assert_close(full.image, alone.image)


def test_hires_and_variation_requests_never_share_a_batched_call():
    from sdxl.batching import batch_key

    plain = GenerationParams(PROMPT)
    assert batch_key(GenerationParams(PROMPT, hires_scale=1.5, denoising_strength=0.5)) is None
    assert batch_key(GenerationParams(PROMPT, subseed=3, subseed_strength=0.2)) is None
    assert batch_key(GenerationParams(PROMPT, schedule="Karras")) != batch_key(plain)
    assert batch_key(GenerationParams(PROMPT, schedule="karras")) == batch_key(
        GenerationParams(PROMPT, schedule="Karras")
    )


# --- hires fix with a refiner (A1111's "Hires fix: which pass to enable refiner for") ---

# the tiny Euler schedules ("leading"): first pass 3 steps [667, 334, 1]; hires pass 3 steps of a 4-step schedule
# [501, 251, 1]; the switch at 0.6 cuts at timestep 400, so in each pass the refiner runs the last 2 steps
SWITCH = 0.6
HIRES = {"hires_scale": 1.5, "hires_steps": 3, "denoising_strength": 0.75}


@pytest.fixture(scope="module")
def ref_refiner(ref_pipes, tiny_refiner):
    """diffusers' refiner on the tiny refiner folder, sharing the base's second text encoder, VAE and scheduler
    (as the runner loads it)."""
    text2img = ref_pipes[0]
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_refiner[0],
        text_encoder_2=text2img.text_encoder_2,
        vae=text2img.vae,
        scheduler=text2img.scheduler,
        torch_dtype=torch.float32,
        add_watermarker=False,
    )
    refiner.set_progress_bar_config(disable=True)
    return refiner


def refined_params(tiny_base, tiny_refiner, **fields) -> GenerationParams:
    refiner = {"refiner": str(tiny_refiner[0]), "refiner_switch_at": SWITCH}
    return params(tiny_base, **{**HIRES, **refiner, **fields})


def reference_pass(pipe, refiner, refined: bool, output_type: str, **call):
    """One pass done with diffusers: `pipe` alone, or `pipe` to `denoising_end` then the refiner from
    `denoising_start` on its latents (same generators, the base's scheduler)."""
    if not refined:
        return pipe(PROMPT, output_type=output_type, **call).images
    latents = pipe(PROMPT, denoising_end=SWITCH, output_type="latent", **call).images
    rest = {k: v for k, v in call.items() if k not in ("image", "strength", "width", "height")}
    return refiner(PROMPT, image=latents, denoising_start=SWITCH, output_type=output_type, **rest).images


def reference_hires_refiner(ref_pipes, refiner, choice: str, upscaler: str) -> Image.Image:
    """The hires fix with the refiner in the pass(es) `choice` names, step by step with diffusers' pipelines."""
    text2img, img2img = ref_pipes
    up = find_upscaler(upscaler)
    first_space = "latent" if up.space == "latent" else "pil"
    call = {"guidance_scale": 5.0, "num_inference_steps": 3, "generator": generators(5)}
    first = reference_pass(text2img, refiner, choice != "second pass", first_space, width=SIZE, height=SIZE, **call)
    if up.space == "latent":
        image = F.interpolate(first, size=(48, 48), mode=up.mode, antialias=up.antialias)
    else:
        image = [i.resize((96, 96), Image.Resampling.LANCZOS) for i in first]
    total = int(3 / 0.75)  # A1111: 4 steps of which the last 3 run
    hires = {"guidance_scale": 5.0, "num_inference_steps": total, "generator": generators(5)}
    refined = choice != "first pass"
    return reference_pass(img2img, refiner, refined, "pil", image=image, strength=3.5 / total, **hires)[0]


@pytest.mark.parametrize(
    ("choice", "upscaler"),
    [("first pass", "Latent"), ("second pass", "Latent"), ("both passes", "Latent"), ("both passes", "Lanczos")],
)
def test_hires_fix_with_refiner_equals_diffusers_steps(
    runner, ref_pipes, ref_refiner, tiny_base, tiny_refiner, choice, upscaler
):
    """Each pass starts on the base; in the pass(es) chosen the refiner takes over at the switch point (diffusers'
    denoising_end / denoising_start hand-off), in the first pass, the hires pass or both."""
    fields = {"hires_refiner_pass": choice, "hires_upscaler": upscaler}
    (result,) = runner.run(refined_params(tiny_base, tiny_refiner, **fields))
    assert result.image.size == (96, 96)
    assert_close(result.image, reference_hires_refiner(ref_pipes, ref_refiner, choice, upscaler))
    assert result.params.hires_refiner_pass == choice


def test_hires_pass_below_the_switch_runs_on_the_refiner_alone(
    runner, ref_pipes, ref_refiner, tiny_base, tiny_refiner
):
    """Strength 0.35: the hires pass's 3 steps (timesteps 251, 126, 1 of an 8-step schedule) all lie past the
    switch point (400), so A1111 switches at its first step: the refiner's image-to-image, same strength and steps
    (no zero-step base call). As 0.15 would with A1111's default switch at 0.8."""
    stages = []
    run_params = refined_params(tiny_base, tiny_refiner, denoising_strength=0.35)
    (result,) = runner.run(run_params, on_step=lambda s: stages.append(s.stage))
    assert stages == ["base"] * 3 + ["hires refiner"] * 3
    text2img, img2img = ref_pipes
    first = text2img(
        PROMPT,
        num_inference_steps=3,
        width=SIZE,
        height=SIZE,
        guidance_scale=5.0,
        generator=generators(5),
        output_type="latent",
    ).images
    total, strength = hires_schedule(3, 0.35)
    assert total == 8
    call = {
        "image": F.interpolate(first, size=(48, 48), mode="bilinear"),
        "num_inference_steps": total,
        "strength": strength,
        "guidance_scale": 5.0,
    }
    ref = ref_refiner(PROMPT, generator=generators(5), **call).images[0]
    assert_close(result.image, ref)
    on_base = img2img(PROMPT, generator=generators(5), **call).images[0]
    assert np.abs(pixels(on_base) - pixels(ref)).max() > 10  # the refiner's pass is not the base's


def test_image_to_image_below_the_switch_runs_on_the_refiner_alone(runner, ref_refiner, tiny_base, tiny_refiner):
    """The same hand-off serves image-to-image: strength 0.5 of 4 steps keeps timesteps 251 and 1, past the switch."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    stages = []
    fields = {"steps": 4, "denoising_strength": 0.5, "refiner": str(tiny_refiner[0]), "refiner_switch_at": SWITCH}
    (result,) = runner.run(params(tiny_base, **fields), image=image, on_step=lambda s: stages.append(s.stage))
    assert stages == ["refiner"] * 2
    ref = ref_refiner(
        PROMPT, image=image, num_inference_steps=4, strength=0.5, guidance_scale=5.0, generator=generators(5)
    ).images[0]
    assert_close(result.image, ref)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"refiner": True, "refiner_switch_at": 0.7, "steps": 4},
        {**HIRES},
        {**HIRES, "refiner": True},
        {**HIRES, "refiner": True, "hires_refiner_pass": "first pass"},
        {**HIRES, "refiner": True, "hires_refiner_pass": "both passes", "steps": 4, "hires_steps": 0},
        {**HIRES, "refiner": True, "denoising_strength": 0.35},
        {**HIRES, "refiner": True, "hires_refiner_pass": "both passes", "sampler": "Heun"},
    ],
    ids=[
        "base",
        "refiner",
        "hires",
        "hires-refiner-2nd",
        "hires-refiner-1st",
        "hires-refiner-both",
        "hires-refiner-alone",
        "heun-both",
    ],
)
def test_reported_steps_are_1_to_the_real_count(runner, tiny_base, tiny_refiner, fields):
    """Every step reports the run's real total (the UNet calls it makes) from the first step on: 1/N, ..., N/N."""
    if fields.get("refiner"):
        fields = {"refiner_switch_at": SWITCH, **fields, "refiner": str(tiny_refiner[0])}
    run_params = params(tiny_base, **fields)
    pipes = [runner.load(run_params.model)]
    if run_params.refiner:
        pipes.append(runner.refiner_for(run_params.refiner, pipes[0], "txt2img"))
    calls = []
    hooks = [pipe.unet.register_forward_hook(lambda *_: calls.append(1)) for pipe in pipes]
    seen = []
    try:
        runner.run(run_params, on_step=lambda s: seen.append((s.step, s.total)))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [(i, len(calls)) for i in range(1, len(calls) + 1)]


@pytest.mark.parametrize(
    ("stop_in", "later", "size"),
    [
        ("base", {"refiner", "hires", "hires refiner"}, 64),
        ("refiner", {"hires", "hires refiner"}, 64),
        ("hires", {"hires refiner"}, 96),
    ],
)
def test_stopping_in_a_stage_runs_no_later_stage(runner, tiny_base, tiny_refiner, stop_in, later, size):
    stages = []

    def on_step(step):
        stages.append(step.stage)
        return "stop" if step.stage == stop_in else None

    (result,) = runner.run(refined_params(tiny_base, tiny_refiner, hires_refiner_pass="both passes"), on_step=on_step)
    assert stages[-1] == stop_in and not later & set(stages)
    assert result.image.size == (size, size)
