"""DPMSolverMultistepScheduler parity with diffusers 0.42.1: schedules, every solver variant, SDE noise, starts."""

from __future__ import annotations

import itertools
import re

import diffusers
import pytest
import torch
from scheduler_helpers import (
    SDXL,
    SIGMA_KINDS,
    STEP_COUNTS,
    assert_loops_match,
    assert_schedule_equal,
    denoise,
    rel_err,
    scheduler_pair,
    start_sample,
)

from sdxl.schedulers.dpm_multistep import DPMSolverMultistepScheduler

SIGMA_KINDS = {**SIGMA_KINDS, "lu": {"use_lu_lambdas": True}}  # DPM-Solver adds Lu et al.'s lambdas
ALGORITHMS = ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


pair = scheduler_pair("DPMSolverMultistepScheduler")


def check_schedules(config: dict) -> None:
    ours, ref = pair(**config)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


def valid(algorithm: str, order: int, final: str) -> bool:
    """The combinations diffusers can run (the others are config errors, tested below)."""
    if algorithm in ("dpmsolver", "sde-dpmsolver") and final == "zero":
        return False
    return not (algorithm == "sde-dpmsolver" and order == 3)


# --- schedules ---


@pytest.mark.parametrize("kind", list(SIGMA_KINDS))
def test_schedule_matches_diffusers(spacing, kind, final):
    check_schedules({**SDXL, "timestep_spacing": spacing, "final_sigmas_type": final, **SIGMA_KINDS[kind]})


@pytest.mark.parametrize(
    "config",
    [
        {"lambda_min_clipped": -5.1},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "trailing"},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "use_lu_lambdas": True},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "timestep_spacing": "linspace"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"},
        {"steps_offset": 0},
        {"num_train_timesteps": 500},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_schedule_options_match_diffusers(config):
    check_schedules({**SDXL, **config})


def test_custom_timesteps_match_diffusers():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(timesteps=[999, 750, 500, 251, 20])
    ref.set_timesteps(timesteps=[999, 750, 500, 251, 20])
    assert_schedule_equal(ours, ref)


@pytest.mark.slow
def test_full_schedule_matrix_matches_diffusers():
    axes = itertools.product(
        ["leading", "trailing", "linspace"],
        list(SIGMA_KINDS),
        ["zero", "sigma_min"],
        ["scaled_linear", "linear", "squaredcos_cap_v2"],
        [False, True],
        [-float("inf"), -5.1],
    )
    for spacing, kind, final, betas, zero_snr, clip in axes:
        check_schedules(
            {
                **SDXL,
                **SIGMA_KINDS[kind],
                "timestep_spacing": spacing,
                "final_sigmas_type": final,
                "beta_schedule": betas,
                "rescale_betas_zero_snr": zero_snr,
                "lambda_min_clipped": clip,
            }
        )


# --- step loops ---

SOLVERS = [
    (algorithm, order, solver_type, final)
    for algorithm, order, solver_type, final in itertools.product(
        ALGORITHMS, [1, 2, 3], ["midpoint", "heun"], ["zero", "sigma_min"]
    )
    if valid(algorithm, order, final) and not (order == 1 and solver_type == "heun")
]


@pytest.mark.parametrize(
    ("algorithm", "order", "solver_type", "final", "steps"),
    # < 15 steps lowers the order near the end; 20 steps only matters above first order
    [(*solver, steps) for solver in SOLVERS for steps in (10, 20) if steps == 10 or solver[1] > 1],
)
def test_solver_loop_matches_diffusers(algorithm, order, solver_type, final, steps):
    config = dict(SDXL, algorithm_type=algorithm, solver_order=order, solver_type=solver_type, final_sigmas_type=final)
    ours, ref = pair(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    seed = 11 if algorithm.startswith("sde") else None
    gens = [torch.Generator().manual_seed(seed) if seed else None for _ in range(2)]
    a = denoise(ours, start_sample(), generator=gens[0])
    b = denoise(ref, start_sample(), generator=gens[1])
    assert_loops_match(a, b)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_prediction_types_and_dtypes_match_diffusers(prediction, algorithm, dtype):
    final = "zero" if algorithm.endswith("++") else "sigma_min"
    ours, ref = pair(**SDXL, prediction_type=prediction, algorithm_type=algorithm, final_sigmas_type=final)
    ours.set_timesteps(12)
    ref.set_timesteps(12)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert_loops_match(
        denoise(ours, start_sample(dtype), generator=gens[0]), denoise(ref, start_sample(dtype), generator=gens[1])
    )


@pytest.mark.parametrize(
    "config",
    [
        {"use_karras_sigmas": True, "solver_order": 3},
        {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
        {"use_lu_lambdas": True, "timestep_spacing": "trailing"},
        {"use_exponential_sigmas": True, "euler_at_final": True},
        {"use_beta_sigmas": True, "lower_order_final": False},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ],
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(9)
    ref.set_timesteps(9)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert_loops_match(
        denoise(ours, start_sample(), generator=gens[0]), denoise(ref, start_sample(), generator=gens[1])
    )


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
def test_learned_variance_keeps_the_first_three_channels(algorithm):
    """variance_type='learned(_range)': the model predicts 6 channels for a 3-channel sample (pixel-space models)."""
    final = "zero" if algorithm == "dpmsolver++" else "sigma_min"
    ours, ref = pair(**SDXL, variance_type="learned_range", algorithm_type=algorithm, final_sigmas_type=final)
    outputs = []
    for sched in (ours, ref):
        sched.set_timesteps(5)
        x = start_sample(shape=(1, 3, 8, 8))
        for t in sched.timesteps:
            model_output = start_sample(shape=(1, 6, 8, 8)) / 5 + 0.1 * x.repeat(1, 2, 1, 1)
            x = sched.step(model_output, t, x).prev_sample
        outputs.append(x)
    assert outputs[0].shape == (1, 3, 8, 8)
    assert rel_err(outputs[0], outputs[1]) <= 1e-6


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_short_schedules_match_diffusers(steps, algorithm):
    ours, ref = pair(**SDXL, solver_order=3, algorithm_type=algorithm, use_karras_sigmas=True)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(2) for _ in range(2)]
    assert_loops_match(
        denoise(ours, start_sample(), generator=gens[0]), denoise(ref, start_sample(), generator=gens[1])
    )


def test_sde_noise_comes_from_the_generator_or_variance_noise():
    ours, ref = pair(**SDXL, algorithm_type="sde-dpmsolver++")
    for sched in (ours, ref):
        sched.set_timesteps(6)
    x = start_sample()
    noise = start_sample() / 3
    a = [ours.step(x * 0.1, t, x, variance_noise=noise).prev_sample for t in ours.timesteps[:2]]
    b = [ref.step(x * 0.1, t, x, variance_noise=noise).prev_sample for t in ref.timesteps[:2]]
    for u, v in zip(a, b):
        assert rel_err(u, v) <= 1e-6
    # different seeds give different samples (the noise is really drawn)
    runs = []
    for seed in (1, 2):
        ours.set_timesteps(6)
        runs.append(denoise(ours, start_sample(), generator=torch.Generator().manual_seed(seed))[-1][1])
    assert rel_err(runs[0], runs[1]) > 1e-3


def test_return_tuple_has_only_prev_sample():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    x = start_sample()
    out = ours.step(x * 0.1, ours.timesteps[0], x, return_dict=False)
    expected = ref.step(x * 0.1, ref.timesteps[0], x, return_dict=False)
    assert len(out) == len(expected) == 1 and rel_err(out[0], expected[0]) == 0.0


# --- mid-schedule starts and add_noise ---


@pytest.mark.parametrize("denoising_start", [0.5, 0.8])
def test_refiner_handoff_matches_diffusers(denoising_start):
    ours, ref = pair(**SDXL, use_karras_sigmas=True)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(30)
        cutoff = round(1000 - denoising_start * 1000)
        n = int((sched.timesteps < cutoff).sum())
        t_start = len(sched.timesteps) - n
        sched.set_begin_index(t_start)
        x = sched.add_noise(start_sample() / 10, start_sample() / 5, sched.timesteps[t_start : t_start + 1].repeat(2))
        results.append((x, denoise(sched, x, start=t_start)))
    assert rel_err(results[0][0], results[1][0]) == 0.0
    assert_loops_match(results[0][1], results[1][1])


def test_start_from_a_timestep_without_begin_index():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert_loops_match(denoise(ours, start_sample(), start=6), denoise(ref, start_sample(), start=6))
    # a timestep not in the schedule means the last step, as in diffusers
    assert ours.index_for_timestep(torch.tensor(3)) == ref.index_for_timestep(torch.tensor(3)) == 19


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_matches_diffusers(dtype):
    ours, ref = pair(**SDXL)
    x0, noise = start_sample(dtype) / 5, start_sample(dtype) / 5
    t = torch.tensor([999, 500])
    for sched in (ours, ref):
        sched.set_timesteps(10)
    t = ours.timesteps[[2, 5]]
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == b.dtype and rel_err(a, b) == 0.0
    for sched in (ours, ref):
        sched.set_begin_index(4)
    assert rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) == 0.0


# --- errors and guards ---


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("algorithm_type", "dpmsolver+++"),
        ("solver_type", "rk4"),
        ("solver_order", 4),
        ("prediction_type", "flow_prediction"),
        ("use_flow_sigmas", True),
        ("use_dynamic_shifting", True),
        ("final_sigmas_type", "sigma_max"),
        ("variance_type", "fixed_small"),
        ("timestep_spacing", "uniform"),
    ],
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"DPMSolverMultistepScheduler does not support {key}={value!r}")):
        DPMSolverMultistepScheduler(**{key: value})


def test_unsupported_combinations_are_rejected():
    with pytest.raises(ValueError, match="final_sigmas_type='zero' is not supported with algorithm_type='dpmsolver'"):
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="solver_order=3 is not supported with algorithm_type='sde-dpmsolver'"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="only one of"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True, use_lu_lambdas=True)


def test_deis_and_unipc_solver_names_map_like_diffusers():
    for source in (diffusers.DEISMultistepScheduler(**SDXL), diffusers.UniPCMultistepScheduler(**SDXL)):
        ours = DPMSolverMultistepScheduler.from_config(source.config)
        ref = diffusers.DPMSolverMultistepScheduler.from_config(source.config)
        assert (ours.config.algorithm_type, ours.config.solver_type) == (
            ref.config.algorithm_type,
            ref.config.solver_type,
        )


def test_step_before_set_timesteps_and_custom_sigmas_are_errors():
    sched = DPMSolverMultistepScheduler(**SDXL)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        sched.set_timesteps(sigmas=[14.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="use_lu_lambdas=True"):
        DPMSolverMultistepScheduler(use_lu_lambdas=True).set_timesteps(timesteps=[999, 500])


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_step_does_not_synchronise(no_sync, algorithm):
    sched = DPMSolverMultistepScheduler(**SDXL, algorithm_type=algorithm, solver_order=3, use_karras_sigmas=True)
    sched.set_timesteps(8)
    ref = diffusers.DPMSolverMultistepScheduler(
        **SDXL, algorithm_type=algorithm, solver_order=3, use_karras_sigmas=True
    )
    ref.set_timesteps(8)
    x = start_sample()
    g = torch.Generator().manual_seed(9)
    x1 = sched.step(
        x * 0.1, sched.timesteps[0], sched.scale_model_input(x, sched.timesteps[0]), generator=g
    ).prev_sample
    samples = []
    with no_sync:
        for t in sched.timesteps[1:]:
            x1 = sched.step(sched.scale_model_input(x1, t) * 0.1, t, x1, generator=g).prev_sample
            samples.append(x1)
    g = torch.Generator().manual_seed(9)
    x2 = ref.step(x * 0.1, ref.timesteps[0], x, generator=g).prev_sample
    for t, ours in zip(ref.timesteps[1:], samples):
        x2 = ref.step(x2 * 0.1, t, x2, generator=g).prev_sample
        assert rel_err(ours, x2) <= 1e-6
