"""DEISMultistepScheduler parity with diffusers 0.42.1: schedules, orders 1-3, prediction types, dtypes, starts."""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from scheduler_helpers import (
    SDXL,
    SDXL_SCHEDULER_JSON,
    SIGMA_KINDS,
    STEP_COUNTS,
    assert_loops_match,
    assert_schedule_equal,
    denoise,
    rel_err,
    scheduler_pair,
    start_sample,
)

from sdxl.schedulers.deis import DEISMultistepScheduler
from sdxl.schedulers.euler import EulerDiscreteScheduler

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers calls np.log on tensors


class NoGenerator:
    """diffusers' DEIS step takes no generator; the shared loop passes one."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    def step(self, *args, generator=None, **kwargs):
        return self.scheduler.step(*args, **kwargs)


pair = scheduler_pair("DEISMultistepScheduler")


def loops(ours, ref, dtype=torch.float32, start=0, sample=None):
    x = start_sample(dtype) if sample is None else sample
    return denoise(ours, x, start=start), denoise(NoGenerator(ref), x, start=start)


def test_schedule_matches_diffusers(spacing, kind):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, **SIGMA_KINDS[kind]})
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 20])
def test_solver_loop_matches_diffusers(order, kind, steps):
    ours, ref = pair(**{**SDXL, "solver_order": order, **SIGMA_KINDS[kind]})
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*loops(ours, ref))


def test_prediction_types_and_dtypes_match_diffusers(prediction, dtype):
    ours, ref = pair(**SDXL, prediction_type=prediction, solver_order=3)
    ours.set_timesteps(12)
    ref.set_timesteps(12)
    assert_loops_match(*loops(ours, ref, dtype))


@pytest.mark.parametrize(
    "config",
    [
        {"lower_order_final": False, "solver_order": 3},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(9)
    ref.set_timesteps(9)
    assert_loops_match(*loops(ours, ref))


@pytest.mark.slow
def test_fifty_steps_match_diffusers():
    ours, ref = pair(**SDXL, solver_order=3)
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    assert_loops_match(*loops(ours, ref))


def test_mid_schedule_start_and_add_noise_match_diffusers():
    ours, ref = pair(**SDXL, use_karras_sigmas=True)
    for sched in (ours, ref):
        sched.set_timesteps(20)
        sched.set_begin_index(8)
    t0 = ours.timesteps[8:9].repeat(2)
    x0, noise = start_sample(torch.float16) / 5, start_sample(torch.float16) / 3
    a, b = ours.add_noise(x0, noise, t0), ref.add_noise(x0, noise, t0)
    assert a.dtype == torch.float16 and rel_err(a, b) == 0.0
    x = ours.add_noise(x0.float(), noise.float(), t0)
    assert_loops_match(*loops(ours, ref, start=8, sample=x))


def test_from_the_sdxl_euler_config_and_rescale_carried_over_match_diffusers():
    """DEIS has no rescale_betas_zero_snr key: a value carried in another scheduler's config is ignored, as in diffusers."""
    euler_json = {**SDXL_SCHEDULER_JSON, "rescale_betas_zero_snr": True}
    ours = DEISMultistepScheduler.from_config(EulerDiscreteScheduler.from_config(euler_json).config)
    ref = diffusers.DEISMultistepScheduler.from_config(diffusers.EulerDiscreteScheduler.from_config(euler_json).config)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert (ours.config.algorithm_type, ours.config.solver_type) == (ref.config.algorithm_type, ref.config.solver_type)
    for n in (1, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


def test_dpm_and_unipc_solver_names_map_like_diffusers():
    for source in (diffusers.DPMSolverMultistepScheduler(**SDXL), diffusers.UniPCMultistepScheduler(**SDXL)):
        ours = DEISMultistepScheduler.from_config(source.config)
        ref = diffusers.DEISMultistepScheduler.from_config(source.config)
        assert (ours.config.algorithm_type, ours.config.solver_type) == (
            ref.config.algorithm_type,
            ref.config.solver_type,
        )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("algorithm_type", "sde-dpmsolver++"),
        ("solver_type", "rk4"),
        ("solver_order", 4),
        ("use_flow_sigmas", True),
        ("timestep_spacing", "uniform"),
    ],
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"DEISMultistepScheduler does not support {key}={value!r}")):
        DEISMultistepScheduler(**{key: value})


def test_errors():
    sched = DEISMultistepScheduler(**SDXL)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        sched.set_timesteps(timesteps=[999, 500])
    with pytest.raises(ValueError, match="only one of"):
        DEISMultistepScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_step_does_not_synchronise(no_sync):
    ours, ref = pair(**SDXL, solver_order=3)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
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
