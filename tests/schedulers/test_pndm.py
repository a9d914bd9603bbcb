"""PNDMScheduler parity with diffusers 0.42.1: PLMS (skip_prk_steps, SDXL's setting) and the PRK warm-up."""

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

from sdxl.schedulers.euler import EulerDiscreteScheduler
from sdxl.schedulers.pndm import PNDMScheduler


class NoGenerator:
    """diffusers' PNDM step takes no generator; the shared loop passes one."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    def step(self, *args, generator=None, **kwargs):
        return self.scheduler.step(*args, **kwargs)


pair = scheduler_pair("PNDMScheduler")


def loops(ours, ref, dtype=torch.float32, start=0):
    return denoise(ours, start_sample(dtype), start=start), denoise(NoGenerator(ref), start_sample(dtype), start=start)


@pytest.mark.parametrize("skip_prk", [True, False])
def test_schedule_matches_diffusers(spacing, skip_prk):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, "skip_prk_steps": skip_prk})
    assert ours.timesteps is None and ref.timesteps is None
    for n in STEP_COUNTS:
        if not skip_prk and n < 4:
            continue
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert ours.timesteps.dtype == ref.timesteps.dtype and torch.equal(ours.timesteps, ref.timesteps)
        assert ours.num_inference_steps == ref.num_inference_steps and ours.init_noise_sigma == ref.init_noise_sigma


@pytest.mark.parametrize("steps", [1, 2, 3, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_plms_loop_matches_diffusers(spacing, steps, dtype):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, "skip_prk_steps": True})
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*loops(ours, ref, dtype))


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_prk_loop_matches_diffusers(steps, dtype):
    ours, ref = pair(**SDXL)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*loops(ours, ref, dtype))


@pytest.mark.parametrize(
    "config",
    [
        {"prediction_type": "v_prediction", "skip_prk_steps": True},
        {"set_alpha_to_one": True, "skip_prk_steps": True, "beta_schedule": "linear"},
        {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    assert_loops_match(*loops(ours, ref))


def test_sdxl_config_and_mid_schedule_start_match_diffusers():
    """The seeds' swap from SDXL's Euler config (skip_prk_steps=True), then an img2img-style start."""
    ours = PNDMScheduler.from_config(EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = diffusers.PNDMScheduler.from_config(diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    assert ours.config.skip_prk_steps is True and ours.config.set_alpha_to_one is False
    ours.set_timesteps(15)
    ref.set_timesteps(15)
    assert torch.equal(ours.timesteps, ref.timesteps)
    ours.set_begin_index(6)  # diffusers' PNDM counts steps from its own counter, wherever it starts
    t0 = ours.timesteps[6:7].repeat(2)
    x0, noise = start_sample() / 5, start_sample() / 3
    assert rel_err(ours.add_noise(x0, noise, t0), ref.add_noise(x0, noise, t0)) == 0.0
    x = ours.add_noise(x0, noise, t0)
    assert_loops_match(denoise(ours, x, start=6), denoise(NoGenerator(ref), x, start=6))


def test_add_noise_in_half_precision_matches_diffusers():
    ours, ref = pair(**SDXL)
    x0, noise = start_sample(torch.float16) / 5, start_sample(torch.float16) / 3
    t = torch.tensor([901, 21])
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == torch.float16 and rel_err(a, b) == 0.0


def test_errors():
    with pytest.raises(ValueError, match=re.escape("PNDMScheduler does not support prediction_type='sample'")):
        PNDMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="skip_prk_steps=False needs at least 4 steps, got 3"):
        PNDMScheduler(**SDXL).set_timesteps(3)
    sched = PNDMScheduler(**SDXL)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        sched.set_timesteps(timesteps=[999, 500])


def test_step_does_not_synchronise(no_sync):
    ours, ref = pair(**SDXL, skip_prk_steps=True)
    ours.set_timesteps(6)
    ref.set_timesteps(6)
    ours.set_begin_index(0)
    x1 = x2 = start_sample()
    samples = []
    with no_sync:
        for t in ours.timesteps:
            x1 = ours.step(x1 * 0.1, t, x1).prev_sample
            samples.append(x1)
    for t, mine in zip(ref.timesteps, samples):
        x2 = ref.step(x2 * 0.1, t, x2).prev_sample
        assert rel_err(mine, x2) <= 1e-6
