"""EDMEulerScheduler and EDMDPMSolverMultistepScheduler against diffusers 0.42: configs, schedules, step loops."""

from __future__ import annotations

import diffusers
import pytest
import torch
from scheduler_helpers import (
    SDXL_SCHEDULER_JSON,
    assert_loops_match,
    assert_schedule_equal,
    denoise,
    normalized,
    scheduler_pair,
    start_sample,
)

import sdxl
from sdxl.schedulers.edm_dpm_multistep import EDMDPMSolverMultistepScheduler
from sdxl.schedulers.edm_euler import EDMEulerScheduler

EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
# an SDXL-range EDM config (what people pair with SDXL checkpoints) and the paper's defaults
CONFIGS = {
    "paper": {},
    "sdxl-range": {"sigma_min": 0.0292, "sigma_max": 14.6146, "sigma_data": 1.0},
    "exponential": {"sigma_schedule": "exponential", "final_sigmas_type": "sigma_min"},
    "v": {"prediction_type": "v_prediction", "rho": 5.0},
}


def pair(name: str, **config):
    return scheduler_pair(name)(**config)


@pytest.mark.parametrize("name", EDM)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_config_and_schedules_match_diffusers(name, config):
    ours, ref = pair(name, **CONFIGS[config])
    assert normalized(ours.config) == normalized(ref.config)
    assert_schedule_equal(ours, ref)
    assert len(ours) == len(ref)
    for n in (1, 2, 7, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("steps", [1, 3, 12])
def test_euler_loop_matches_diffusers(config, steps, dtype):
    ours, ref = pair("EDMEulerScheduler", **CONFIGS[config])
    for s in (ours, ref):
        s.set_timesteps(steps)
    x = start_sample(dtype) * ours.init_noise_sigma / 5
    assert_loops_match(denoise(ours, x), denoise(ref, x))


def test_euler_churn_matches_diffusers():
    ours, ref = pair("EDMEulerScheduler", **CONFIGS["sdxl-range"])
    for s in (ours, ref):
        s.set_timesteps(10)
    x = start_sample()
    churn = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 8.0}
    got = denoise(ours, x, generator=torch.Generator().manual_seed(3), **churn)
    want = denoise(ref, x, generator=torch.Generator().manual_seed(3), **churn)
    assert_loops_match(got, want)


def test_euler_custom_sigmas_are_a_ramp_as_in_diffusers():
    ours, ref = pair("EDMEulerScheduler", **CONFIGS["sdxl-range"])
    ramp = torch.tensor([0.0, 0.2, 0.5, 0.9])
    ours.set_timesteps(sigmas=ramp)
    ref.set_timesteps(sigmas=ramp)
    assert_schedule_equal(ours, ref)
    x = start_sample()
    assert_loops_match(denoise(ours, x), denoise(ref, x))
    ours.set_timesteps(sigmas=[0.0, 0.2, 0.5, 0.9])  # a list works too (diffusers needs a tensor)
    ref.set_timesteps(sigmas=torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=torch.float64))
    assert_schedule_equal(ours, ref)
    x = start_sample()
    assert_loops_match(denoise(ours, x), denoise(ref, x))


# (there is no third-order SDE update: test_errors)
SOLVERS = [(1, "dpmsolver++"), (2, "dpmsolver++"), (3, "dpmsolver++"), (1, "sde-dpmsolver++"), (2, "sde-dpmsolver++")]


@pytest.mark.parametrize(("order", "algorithm"), SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 16])
def test_dpm_loop_matches_diffusers(order, algorithm, steps):
    config = dict(CONFIGS["sdxl-range"], solver_order=order, algorithm_type=algorithm)
    ours, ref = pair("EDMDPMSolverMultistepScheduler", **config)
    for s in (ours, ref):
        s.set_timesteps(steps)
    x = start_sample()
    got = denoise(ours, x, generator=torch.Generator().manual_seed(5))
    want = denoise(ref, x, generator=torch.Generator().manual_seed(5))
    assert_loops_match(got, want)


@pytest.mark.parametrize(
    "config",
    [
        {"solver_type": "heun", "final_sigmas_type": "sigma_min"},
        {"lower_order_final": False, "euler_at_final": True, "prediction_type": "v_prediction"},
        {"thresholding": True, "sample_max_value": 2.0, "sigma_schedule": "exponential"},
        {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"},  # mapped onto ours
    ],
)
def test_dpm_options_match_diffusers(config, dtype):
    ours, ref = pair("EDMDPMSolverMultistepScheduler", **config)
    assert normalized(ours.config) == normalized(ref.config)
    for s in (ours, ref):
        s.set_timesteps(8)
    x = start_sample(dtype) * 10
    assert_loops_match(denoise(ours, x), denoise(ref, x))


@pytest.mark.parametrize("name", EDM)
def test_add_noise_and_mid_schedule_start_match_diffusers(name):
    ours, ref = pair(name, **CONFIGS["sdxl-range"])
    for s in (ours, ref):
        s.set_timesteps(10)
        s.set_begin_index(4)
    x, noise = start_sample(), start_sample(shape=(2, 4, 8, 8)).flip(0)
    t = ours.timesteps[4:5].repeat(2)
    assert torch.equal(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    assert_loops_match(denoise(ours, x, start=4), denoise(ref, x, start=4))


@pytest.mark.parametrize("name", EDM)
def test_from_the_sdxl_config_and_compatibles_match_diffusers(name):
    ours = getattr(sdxl, name).from_config(SDXL_SCHEDULER_JSON)
    ref = getattr(diffusers, name).from_config(SDXL_SCHEDULER_JSON)
    assert normalized(ours.config) == normalized(ref.config)
    assert [c.__name__ for c in ours.compatibles] == [c.__name__ for c in ref.compatibles] == [name]


def test_euler_compatibles_are_diffusers_fifteen():
    ours = {c.__name__ for c in sdxl.EulerDiscreteScheduler().compatibles}
    ref = {c.__name__ for c in diffusers.EulerDiscreteScheduler().compatibles}
    assert ours == ref and len(ours) == 15


def test_errors():
    with pytest.raises(ValueError, match="solver_order=3 is not supported with algorithm_type='sde-dpmsolver\\+\\+'"):
        EDMDPMSolverMultistepScheduler(solver_order=3, algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="does not support prediction_type='sample'"):
        EDMEulerScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="does not support sigma_schedule='linear'"):
        EDMEulerScheduler(sigma_schedule="linear")
    with pytest.raises(ValueError, match="needs sigma_min > 0, got None"):
        EDMEulerScheduler.from_config({"sigma_min": None, "num_train_timesteps": 1000})
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        EDMEulerScheduler().set_timesteps(timesteps=[999, 500])
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        EDMDPMSolverMultistepScheduler().set_timesteps(sigmas=[0.0, 0.5])
    with pytest.raises(ValueError, match="integer timestep"):
        sched = EDMEulerScheduler()
        sched.set_timesteps(4)
        sched.step(torch.zeros(1, 4, 2, 2), 3, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="before set_timesteps"):
        EDMDPMSolverMultistepScheduler().step(torch.zeros(1, 4, 2, 2), 0.1, torch.zeros(1, 4, 2, 2))
