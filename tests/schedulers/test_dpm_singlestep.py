"""DPMSolverSinglestepScheduler parity with diffusers 0.42.1: schedules, every solver variant, SDE noise, starts."""

from __future__ import annotations

import itertools
import re

import diffusers
import pytest
import torch
from scheduler_helpers import (
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

from sdxl.schedulers.dpm_singlestep import DPMSolverSinglestepScheduler, order_list
from sdxl.schedulers.euler import EulerDiscreteScheduler

# SDXL's betas (this scheduler has no timestep_spacing / steps_offset keys)
BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
ALGORITHMS = ["dpmsolver++", "sde-dpmsolver++", "dpmsolver"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


pair = scheduler_pair("DPMSolverSinglestepScheduler")


def seeded_loops(ours, ref, dtype=torch.float32, seed=7, start=0, sample=None):
    x = start_sample(dtype) if sample is None else sample
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    return denoise(ours, x, start=start, generator=gens[0]), denoise(ref, x, start=start, generator=gens[1])


@pytest.mark.parametrize("clip", [-float("inf"), -5.1])
def test_schedule_matches_diffusers(kind, final, clip):
    ours, ref = pair(**BETAS, final_sigmas_type=final, lambda_min_clipped=clip, **SIGMA_KINDS[kind])
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)
        assert ours.order_list == ref.order_list


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("final_zero", [False, True])
def test_order_lists_match_diffusers(order, lower_order_final, final_zero):
    ref = diffusers.DPMSolverSinglestepScheduler(
        solver_order=order,
        lower_order_final=lower_order_final,
        final_sigmas_type="zero" if final_zero else "sigma_min",
    )
    for n in range(1, 13):
        if not lower_order_final and n % order:
            continue  # diffusers switches lower_order_final on for these
        assert order_list(n, order, lower_order_final, final_zero) == ref.get_order_list(n)


def test_custom_timesteps_match_diffusers():
    ours, ref = pair(**BETAS)
    ours.set_timesteps(timesteps=[999, 750, 500, 251, 20])
    ref.set_timesteps(timesteps=[999, 750, 500, 251, 20])
    assert_schedule_equal(ours, ref)
    assert_loops_match(*seeded_loops(ours, ref))


SOLVERS = [
    (algorithm, order, solver_type)
    for algorithm, order, solver_type in itertools.product(ALGORITHMS, [1, 2, 3], ["midpoint", "heun"])
    if not (order == 1 and solver_type == "heun")
]


@pytest.mark.parametrize(("algorithm", "order", "solver_type"), SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 12])
def test_solver_loop_matches_diffusers(algorithm, order, solver_type, steps):
    final = "sigma_min" if algorithm == "dpmsolver" else "zero"
    ours, ref = pair(
        **BETAS, algorithm_type=algorithm, solver_order=order, solver_type=solver_type, final_sigmas_type=final
    )
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*seeded_loops(ours, ref))
    assert ours.config.lower_order_final == ref.config.lower_order_final  # switched on as diffusers does


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_prediction_types_and_dtypes_match_diffusers(prediction, algorithm, dtype):
    final = "sigma_min" if algorithm == "dpmsolver" else "zero"
    ours, ref = pair(
        **BETAS, prediction_type=prediction, algorithm_type=algorithm, final_sigmas_type=final, solver_order=3
    )
    ours.set_timesteps(12)
    ref.set_timesteps(12)
    assert_loops_match(*seeded_loops(ours, ref, dtype))


@pytest.mark.parametrize(
    "config",
    [
        {"use_karras_sigmas": True, "solver_order": 3},
        {"use_exponential_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
        {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min"},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 2},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**BETAS, **config})
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert_loops_match(*seeded_loops(ours, ref))


def test_learned_variance_keeps_the_first_three_channels():
    ours, ref = pair(**BETAS, variance_type="learned_range")
    outputs = []
    for sched in (ours, ref):
        sched.set_timesteps(5)
        x = start_sample(shape=(1, 3, 8, 8))
        for t in sched.timesteps:
            x = sched.step(start_sample(shape=(1, 6, 8, 8)) / 5 + 0.1 * x.repeat(1, 2, 1, 1), t, x).prev_sample
        outputs.append(x)
    assert outputs[0].shape == (1, 3, 8, 8) and rel_err(*outputs) <= 1e-6


def test_sde_noise_comes_from_the_generator():
    sched = DPMSolverSinglestepScheduler(**BETAS, algorithm_type="sde-dpmsolver++")
    runs = []
    for seed in (1, 2):
        sched.set_timesteps(6)
        runs.append(denoise(sched, start_sample(), generator=torch.Generator().manual_seed(seed))[-1][1])
    assert rel_err(runs[0], runs[1]) > 1e-3


@pytest.mark.parametrize("begin", [5, 6])  # a block entered at its first or second step
def test_mid_schedule_start_and_add_noise_match_diffusers(begin):
    ours, ref = pair(**BETAS, solver_order=3, use_karras_sigmas=True)
    for sched in (ours, ref):
        sched.set_timesteps(15)
        sched.set_begin_index(begin)
    t0 = ours.timesteps[begin : begin + 1].repeat(2)
    x0, noise = start_sample(torch.float16) / 5, start_sample(torch.float16) / 3
    a, b = ours.add_noise(x0, noise, t0), ref.add_noise(x0, noise, t0)
    assert a.dtype == torch.float16 and rel_err(a, b) == 0.0
    x = ours.add_noise(x0.float(), noise.float(), t0)
    assert_loops_match(*seeded_loops(ours, ref, start=begin, sample=x))


def test_from_the_sdxl_euler_config_matches_diffusers():
    ours = DPMSolverSinglestepScheduler.from_config(EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = diffusers.DPMSolverSinglestepScheduler.from_config(
        diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config
    )
    for n in (1, 25, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)
    # the switched-on lower_order_final is in the config, as in diffusers, and survives a round trip
    assert ours.config.lower_order_final is True and ref.config.lower_order_final is True
    assert ours.config["timestep_spacing"] == "leading"  # kept (hidden) for the next scheduler


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("algorithm_type", "sde-dpmsolver"),
        ("solver_type", "rk4"),
        ("solver_order", 4),
        ("prediction_type", "flow_prediction"),
        ("use_flow_sigmas", True),
        ("final_sigmas_type", "sigma_max"),
    ],
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"DPMSolverSinglestepScheduler does not support {key}={value!r}")):
        DPMSolverSinglestepScheduler(**{key: value})


def test_errors():
    with pytest.raises(ValueError, match="final_sigmas_type='zero' is not supported with algorithm_type='dpmsolver'"):
        DPMSolverSinglestepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="thresholding=True is not supported with algorithm_type='dpmsolver'"):
        DPMSolverSinglestepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", thresholding=True)
    sched = DPMSolverSinglestepScheduler(**BETAS)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        sched.set_timesteps(sigmas=[14.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="use_karras_sigmas=True"):
        DPMSolverSinglestepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500])


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_step_does_not_synchronise(no_sync, algorithm):
    ours, ref = pair(**BETAS, algorithm_type=algorithm, solver_order=3, use_karras_sigmas=True)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    ours.set_begin_index(0)
    x1 = x2 = start_sample()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    samples = []
    with no_sync:
        for t in ours.timesteps:
            x1 = ours.step(x1 * 0.1, t, x1, generator=g1).prev_sample
            samples.append(x1)
    for t, mine in zip(ref.timesteps, samples):
        x2 = ref.step(x2 * 0.1, t, x2, generator=g2).prev_sample
        assert rel_err(mine, x2) <= 1e-6
