"""UniPCMultistepScheduler parity with diffusers 0.42.1: schedules, bh1/bh2, predict_x0, orders, corrector, starts."""

from __future__ import annotations

import itertools
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

from sdxl.schedulers.euler import EulerDiscreteScheduler
from sdxl.schedulers.unipc import UniPCMultistepScheduler

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers calls np.log on tensors


class NoGenerator:
    """diffusers' UniPC step takes no generator; the shared loop passes one."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    def step(self, *args, generator=None, **kwargs):
        return self.scheduler.step(*args, **kwargs)


pair = scheduler_pair("UniPCMultistepScheduler")


def loops(ours, ref, dtype=torch.float32, start=0, sample=None):
    x = start_sample(dtype) if sample is None else sample
    return denoise(ours, x, start=start), denoise(NoGenerator(ref), x, start=start)


def check_schedules(config: dict) -> None:
    ours, ref = pair(**config)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


def test_schedule_matches_diffusers(spacing, kind, final):
    check_schedules({**SDXL, "timestep_spacing": spacing, "final_sigmas_type": final, **SIGMA_KINDS[kind]})


@pytest.mark.parametrize(
    "config",
    [
        {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        {"steps_offset": 0, "num_train_timesteps": 500},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_schedule_options_match_diffusers(config):
    check_schedules({**SDXL, **config})


# bh1 and noise prediction cannot step to a zero final sigma in diffusers (NaN), so those use sigma_min
SOLVERS = [
    (order, bh, x0, "zero" if (bh == "bh2" and x0) else "sigma_min")
    for order, bh, x0 in itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False])
]


@pytest.mark.parametrize(("order", "solver_type", "predict_x0", "final"), SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 10])
def test_solver_loop_matches_diffusers(order, solver_type, predict_x0, final, steps):
    config = dict(SDXL, solver_order=order, solver_type=solver_type, predict_x0=predict_x0, final_sigmas_type=final)
    ours, ref = pair(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(*loops(ours, ref))


@pytest.mark.parametrize("predict_x0", [True, False])
def test_prediction_types_and_dtypes_match_diffusers(prediction, predict_x0, dtype):
    final = "zero" if predict_x0 else "sigma_min"
    ours, ref = pair(**SDXL, prediction_type=prediction, predict_x0=predict_x0, final_sigmas_type=final)
    ours.set_timesteps(12)
    ref.set_timesteps(12)
    assert_loops_match(*loops(ours, ref, dtype))


@pytest.mark.parametrize(
    "config",
    [
        {"use_karras_sigmas": True, "solver_order": 3},
        {"use_exponential_sigmas": True, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min"},
        {"disable_corrector": [0, 1, 4]},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_option_loops_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(9)
    ref.set_timesteps(9)
    assert_loops_match(*loops(ours, ref))


@pytest.mark.slow
def test_fifty_steps_third_order_match_diffusers():
    ours, ref = pair(**SDXL, solver_order=3, use_karras_sigmas=True)
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    assert_loops_match(*loops(ours, ref))


def test_bh1_with_a_zero_final_sigma_stays_finite():
    """Deviation: diffusers' bh1 multiplies -inf by a zero residual at the final zero sigma and returns NaN."""
    ours = UniPCMultistepScheduler(**SDXL, solver_type="bh1")
    ours.set_timesteps(4)
    out = denoise(ours, start_sample())[-1][1]
    assert torch.isfinite(out).all()


# --- mid-schedule starts and add_noise ---


@pytest.mark.parametrize("denoising_start", [0.5, 0.8])
def test_refiner_handoff_matches_diffusers(denoising_start):
    ours, ref = pair(**SDXL, use_karras_sigmas=True)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(30)
        cutoff = round(1000 - denoising_start * 1000)
        t_start = len(sched.timesteps) - int((sched.timesteps < cutoff).sum())
        sched.set_begin_index(t_start)
        x = sched.add_noise(start_sample() / 10, start_sample() / 5, sched.timesteps[t_start : t_start + 1].repeat(2))
        results.append(x)
    assert rel_err(results[0], results[1]) == 0.0
    assert_loops_match(*loops(ours, ref, start=t_start, sample=results[0]))


def test_start_without_begin_index_and_half_add_noise():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert_loops_match(*loops(ours, ref, start=6))
    assert ours.index_for_timestep(torch.tensor(3)) == ref.index_for_timestep(torch.tensor(3)) == 19
    x0, noise = start_sample(torch.float16) / 5, start_sample(torch.float16) / 5
    t = ours.timesteps[[2, 5]]
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == b.dtype == torch.float16 and rel_err(a, b) == 0.0


def test_from_the_sdxl_euler_config_matches_diffusers():
    ours = UniPCMultistepScheduler.from_config(EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = diffusers.UniPCMultistepScheduler.from_config(
        diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config
    )
    for key in ("timestep_spacing", "steps_offset", "solver_type", "use_karras_sigmas", "disable_corrector"):
        assert ours.config[key] == ref.config[key]
    for n in (1, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


def test_dpm_and_deis_solver_names_map_like_diffusers():
    for source in (diffusers.DPMSolverMultistepScheduler(**SDXL), diffusers.DEISMultistepScheduler(**SDXL)):
        assert UniPCMultistepScheduler.from_config(source.config).config.solver_type == "bh2"
        assert diffusers.UniPCMultistepScheduler.from_config(source.config).config.solver_type == "bh2"


# --- errors and guards ---


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("solver_type", "rk4"),
        ("solver_order", 4),
        ("prediction_type", "flow_prediction"),
        ("use_flow_sigmas", True),
        ("final_sigmas_type", "sigma_max"),
        ("timestep_spacing", "uniform"),
        ("shift_terminal", 0.1),
    ],
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"UniPCMultistepScheduler does not support {key}={value!r}")):
        UniPCMultistepScheduler(**{key: value})


def test_errors():
    for order in (2, 3):
        with pytest.raises(ValueError, match=f"solver_order={order} with lower_order_final=False"):
            UniPCMultistepScheduler(solver_order=order, lower_order_final=False)
    with pytest.raises(ValueError, match="only one of"):
        UniPCMultistepScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    sched = UniPCMultistepScheduler(**SDXL)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        sched.set_timesteps(sigmas=[14.0, 1.0, 0.0])


def test_step_does_not_synchronise(no_sync):
    ours, ref = pair(**SDXL, solver_order=3, use_karras_sigmas=True)
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
