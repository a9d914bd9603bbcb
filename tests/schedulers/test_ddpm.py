"""DDPMScheduler parity with diffusers 0.42.1: schedules, variance types, seeded noise, custom timesteps, starts."""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from scheduler_helpers import (
    SDXL,
    SDXL_SCHEDULER_JSON,
    STEP_COUNTS,
    assert_loops_match,
    denoise,
    rel_err,
    scheduler_pair,
    start_sample,
)

from sdxl.schedulers.ddpm import DDPMScheduler
from sdxl.schedulers.euler import EulerDiscreteScheduler

pair = scheduler_pair("DDPMScheduler")


def assert_timesteps_equal(ours, ref) -> None:
    assert ours.timesteps.dtype == ref.timesteps.dtype
    assert torch.equal(ours.timesteps, ref.timesteps), (ours.timesteps, ref.timesteps)
    assert ours.init_noise_sigma == ref.init_noise_sigma


def normalized(config) -> dict:
    out = dict(config)
    out["_use_default_values"] = sorted(out.get("_use_default_values", ()))
    return out


def seeded_loops(ours, ref, dtype=torch.float32, seed=3, **kwargs):
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    return denoise(ours, start_sample(dtype), generator=gens[0], **kwargs), denoise(
        ref, start_sample(dtype), generator=gens[1], **kwargs
    )


@pytest.mark.parametrize("offset", [0, 1])
def test_schedule_matches_diffusers(spacing, offset):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, "steps_offset": offset})
    assert_timesteps_equal(ours, ref)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_timesteps_equal(ours, ref)
        assert ours.num_inference_steps == ref.num_inference_steps


@pytest.mark.parametrize("zero_snr", [False, True])
def test_training_schedule_matches_diffusers(zero_snr):
    ours, ref = pair(**SDXL, rescale_betas_zero_snr=zero_snr)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_custom_timesteps_match_diffusers():
    ours, ref = pair(**SDXL, clip_sample=False)
    ours.set_timesteps(timesteps=[999, 700, 420, 100, 0])
    ref.set_timesteps(timesteps=[999, 700, 420, 100, 0])
    assert_timesteps_equal(ours, ref)
    assert ours.custom_timesteps and ref.custom_timesteps
    assert_loops_match(*seeded_loops(ours, ref))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_variance_types_and_dtypes_match_diffusers(variance_type, dtype):
    ours, ref = pair(**SDXL, variance_type=variance_type, clip_sample=False)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert_loops_match(*seeded_loops(ours, ref, dtype))


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_splits_the_output_like_diffusers(variance_type):
    ours, ref = pair(**SDXL, variance_type=variance_type)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(5)
        g = torch.Generator().manual_seed(2)
        x = start_sample(shape=(1, 3, 8, 8)) / 5
        for t in sched.timesteps:
            model_output = torch.cat([0.3 * x, torch.full_like(x, 0.4) + 0.1 * x], dim=1)  # (1, 6, 8, 8): eps, var
            x = sched.step(model_output, t, x, generator=g).prev_sample
        results.append(x)
    assert results[0].shape == (1, 3, 8, 8) and rel_err(*results) <= 1e-6


@pytest.mark.parametrize(
    "config",
    [
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        {"prediction_type": "sample"},
        {"clip_sample": True, "clip_sample_range": 1.5},
        {"thresholding": True, "sample_max_value": 1.5},
        {"beta_schedule": "squaredcos_cap_v2"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    assert_loops_match(*seeded_loops(ours, ref))


@pytest.mark.parametrize("steps", [1, 2, 3, 25])
def test_step_counts_match_diffusers(steps):
    ours, ref = pair(**SDXL, clip_sample=False)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*seeded_loops(ours, ref, seed=steps))


def test_steps_before_set_timesteps_follow_the_training_schedule():
    """Without set_timesteps, diffusers steps t -> t - 1; so do we."""
    ours, ref = pair(**SDXL)
    x = start_sample()
    a = ours.step(x * 0.1, 3, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = ref.step(x * 0.1, 3, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert rel_err(a, b) == 0.0
    assert int(ours.previous_timestep(3)) == int(ref.previous_timestep(3)) == 2


def test_noise_comes_from_the_generator():
    ours = DDPMScheduler(**SDXL)
    runs = []
    for seed in (1, 2):
        ours.set_timesteps(4)
        runs.append(denoise(ours, start_sample(), generator=torch.Generator().manual_seed(seed))[-1][1])
    assert rel_err(runs[0], runs[1]) > 1e-3


def test_mid_schedule_start_and_add_noise_match_diffusers():
    ours, ref = pair(**SDXL)
    for sched in (ours, ref):
        sched.set_timesteps(12)
    ours.set_begin_index(5)
    t0 = ours.timesteps[5:6].repeat(2)
    x0, noise = start_sample(torch.float16) / 5, start_sample(torch.float16) / 3
    assert rel_err(ours.add_noise(x0, noise, t0), ref.add_noise(x0, noise, t0)) == 0.0
    x = ours.add_noise(start_sample() / 5, start_sample() / 3, t0)
    gens = [torch.Generator().manual_seed(8) for _ in range(2)]
    assert_loops_match(denoise(ours, x, start=5, generator=gens[0]), denoise(ref, x, start=5, generator=gens[1]))


def test_from_the_sdxl_euler_config_matches_diffusers():
    ours = DDPMScheduler.from_config(EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = diffusers.DDPMScheduler.from_config(diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    assert normalized(ours.config) == normalized(ref.config)
    ours.set_timesteps(30)
    ref.set_timesteps(30)
    assert_timesteps_equal(ours, ref)


@pytest.mark.parametrize(
    ("key", "value"), [("variance_type", "fixed"), ("beta_schedule", "sigmoid"), ("timestep_spacing", "uniform")]
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"DDPMScheduler does not support {key}={value!r}")):
        DDPMScheduler(**{key: value})


def test_errors():
    sched = DDPMScheduler(**SDXL)
    with pytest.raises(ValueError, match="must be strictly descending"):
        sched.set_timesteps(timesteps=[500, 700])
    with pytest.raises(ValueError, match="must start below num_train_timesteps=1000"):
        sched.set_timesteps(timesteps=[1000, 500])
    with pytest.raises(ValueError, match="cannot be larger than num_train_timesteps"):
        sched.set_timesteps(1001)
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        sched.set_timesteps(sigmas=[1.0, 0.0])
    sched.set_timesteps(4)
    x = start_sample()
    with pytest.raises(ValueError, match="timestep 5 is not in DDPMScheduler.timesteps"):
        sched.step(x, 5, x)


def test_step_does_not_synchronise(no_sync):
    ours, ref = pair(**SDXL)
    ours.set_timesteps(6)
    ref.set_timesteps(6)
    ours.set_begin_index(0)
    x1 = x2 = start_sample()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    samples = []
    with no_sync:
        for t in ours.timesteps:
            x1 = ours.step(x1 * 0.1, t, x1, generator=g1).prev_sample
            samples.append(x1)
    for t, mine in zip(ref.timesteps, samples):
        x2 = ref.step(x2 * 0.1, t, x2, generator=g2).prev_sample
        assert rel_err(mine, x2) <= 1e-6
