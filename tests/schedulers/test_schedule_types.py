"""AUTOMATIC1111's schedule types: each formula against its published form (and diffusers' sigmas where diffusers
has it), and each k-diffusion sampler running a schedule type's levels exactly as diffusers runs the same levels."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_utils import AysSchedules
from k_helpers import denoise_loop
from scheduler_helpers import SDXL, assert_loops_match, denoise, start_sample

from sdxl.schedulers import base, schedule_types
from sdxl.schedulers.base import scheduler_class
from sdxl.schedulers.schedule_types import SCHEDULE_FUNCTIONS, schedule_sigmas
from sdxl.schedulers.sigmas import training_sigmas

TRAIN = training_sigmas(diffusers.EulerDiscreteScheduler(**SDXL).alphas_cumprod).numpy()  # ascending, float32
S_MIN, S_MAX = float(TRAIN[0]), float(TRAIN[-1])
K_SAMPLERS = [
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler",
]
STOCHASTIC = {"EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
TAKE_GENERATOR = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"}
CONFIG = {**SDXL, "noise_sampler_seed": 42}  # DPM-SDE's Brownian tree needs a seed to be comparable


def log_interp_sigma(t: np.ndarray) -> np.ndarray:
    """sigma at fractional training timesteps t, linear in log sigma (the published definition of sigma(t))."""
    return np.exp(np.interp(t, np.arange(len(TRAIN)), np.log(TRAIN.astype(np.float64))))


# --- the formulas ---


@pytest.mark.parametrize("n", [1, 4, 30])
def test_karras_exponential_beta_match_diffusers(n):
    ref = diffusers.EulerDiscreteScheduler(**SDXL)
    ends = np.array([S_MAX, S_MIN])
    for name, convert in (("karras", ref._convert_to_karras), ("exponential", ref._convert_to_exponential)):
        ours = schedule_sigmas(name, n, TRAIN)
        np.testing.assert_allclose(ours[:-1], convert(ends, n), rtol=2e-6)
        assert ours[-1] == 0 and len(ours) == n + 1
    ours = schedule_sigmas("beta", n, TRAIN)
    np.testing.assert_allclose(ours[:-1], ref._convert_to_beta(torch.tensor(ends), n), rtol=1e-6)


def test_align_your_steps_is_the_published_sdxl_schedule():
    assert np.array_equal(
        schedule_sigmas("align_your_steps", 10, TRAIN), np.float32(AysSchedules["StableDiffusionXLSigmas"])
    )
    for n in (5, 20):  # other counts: log-linear between the published levels, ending at 0
        sigmas = schedule_sigmas("align_your_steps", n, TRAIN)
        assert len(sigmas) == n + 1 and sigmas[0] == np.float32(14.615) and sigmas[-1] == 0
        assert np.all(np.diff(sigmas) < 0)
    logs = np.log(schedule_sigmas("align_your_steps", 20, TRAIN)[:-1].astype(np.float64))
    # 21 points over the 11 published ones: the even ones are published levels, the odd ones their log-midpoints
    np.testing.assert_allclose(logs[::2], np.log(schedule_types.AYS_SDXL_SIGMAS[:10]), rtol=1e-6)
    np.testing.assert_allclose(logs[1:18:2], (logs[0:18:2] + logs[2:20:2]) / 2, rtol=1e-5)


def test_polyexponential_and_kl_optimal_formulas():
    np.testing.assert_allclose(
        schedule_sigmas("polyexponential", 12, TRAIN), schedule_sigmas("exponential", 12, TRAIN), rtol=1e-6
    )
    rho2 = schedule_sigmas("polyexponential", 12, TRAIN, rho=2.0)[:-1].astype(np.float64)
    position = (np.log(rho2) - np.log(S_MIN)) / (np.log(S_MAX) - np.log(S_MIN))  # where in log sigma
    np.testing.assert_allclose(position, np.linspace(1, 0, 12) ** 2, atol=2e-6)
    kl = schedule_sigmas("kl_optimal", 12, TRAIN).astype(np.float64)
    assert len(kl) == 13 and kl[-1] == pytest.approx(S_MIN, rel=1e-6) and kl[0] == pytest.approx(S_MAX, rel=1e-6)
    np.testing.assert_allclose(np.diff(np.arctan(kl)), np.diff(np.arctan(kl)).mean(), rtol=1e-4)  # even in arctan


@pytest.mark.parametrize("n", [1, 7, 30])
def test_timestep_spaced_schedules_match_their_definitions(n):
    cases = {
        "uniform": np.linspace(999, 0, n),
        "normal": np.linspace(999, 0, n),
        "sgm_uniform": np.linspace(999, 0, n + 1)[:-1],
    }
    for name, t in cases.items():
        ours = schedule_sigmas(name, n, TRAIN)
        np.testing.assert_allclose(ours[:-1], log_interp_sigma(t), rtol=2e-6)
        assert ours[-1] == 0


def test_simple_and_ddim_pick_training_sigmas():
    simple = schedule_sigmas("simple", 7, TRAIN)
    assert np.array_equal(simple[:-1], TRAIN[[999 - int(x * 1000 / 7) for x in range(7)]]) and simple[-1] == 0
    ddim = schedule_sigmas("ddim", 30, TRAIN)  # k = 33: timesteps 1, 34, ..., 991: 31 steps, as A1111's
    assert np.array_equal(ddim[:-1], TRAIN[1:1000:33][::-1]) and len(ddim) == 32


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule type 'karas'"):
        schedule_sigmas("karas", 10, TRAIN)
    with pytest.raises(ValueError, match="schedule type 'beta' takes no rho"):
        schedule_sigmas("beta", 10, TRAIN, rho=3.0)


# --- the samplers ---


def every_other(sigmas: np.ndarray) -> np.ndarray:
    """The schedule of a second-order scheduler's levels [s0, s1, s1, ..., s_{n-1}, s_{n-1}, final]."""
    return np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])


def reference(name: str, n: int) -> tuple[object, np.ndarray]:
    """diffusers' scheduler `name` on its exponential schedule, and that schedule's levels (final level last).

    Euler a has no exponential option: it gets Euler's levels and timesteps installed. KDPM2's stored levels
    interleave midpoints: its schedule is that of an Euler twin (the same range)."""
    euler = diffusers.EulerDiscreteScheduler(**SDXL, use_exponential_sigmas=True)
    euler.set_timesteps(n)
    if name == "EulerAncestralDiscreteScheduler":
        ref = diffusers.EulerAncestralDiscreteScheduler(**SDXL)
        ref.set_timesteps(n)
        ref.sigmas, ref.timesteps = euler.sigmas.clone(), euler.timesteps.clone()
        return ref, euler.sigmas.numpy()
    ref = getattr(diffusers, name).from_config(CONFIG, use_exponential_sigmas=True)
    ref.set_timesteps(n)
    if name.startswith("KDPM2"):
        return ref, euler.sigmas.numpy()
    return ref, every_other(ref.sigmas.numpy()) if ref.order == 2 else ref.sigmas.numpy()


@pytest.mark.parametrize("name", K_SAMPLERS)
@pytest.mark.parametrize("n", [2, 9])
def test_each_k_sampler_runs_schedule_levels_as_diffusers(name, n, monkeypatch):
    ref, levels = reference(name, n)
    monkeypatch.setattr(base, "schedule_sigmas", lambda *args: levels)
    ours = scheduler_class(name).from_config(CONFIG)
    ours.set_schedule_type("exponential")
    ours.set_timesteps(n)
    assert torch.equal(ours.sigmas, ref.sigmas), (ours.sigmas, ref.sigmas)
    assert ours.timesteps.dtype == ref.timesteps.dtype
    rounded = name in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")  # as their karras path
    np.testing.assert_allclose(ours.timesteps.double(), ref.timesteps.double(), atol=1.0 if rounded else 1e-4)
    x = start_sample() * float(ours.init_noise_sigma)
    if name in STOCHASTIC:
        got = denoise(ours, x, generator=torch.Generator().manual_seed(0))
        want = denoise(ref, x, generator=torch.Generator().manual_seed(0))
    elif name in TAKE_GENERATOR:
        got, want = denoise(ours, x), denoise(ref, x)
    else:
        got, want = denoise_loop(ours, x), denoise_loop(ref, x)
    assert_loops_match(got, want)


@pytest.mark.parametrize("schedule", list(SCHEDULE_FUNCTIONS))
def test_schedule_types_set_the_levels(schedule):
    for name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler"):
        sched = scheduler_class(name).from_config(SDXL)
        sched.set_schedule_type(schedule)
        sched.set_timesteps(8)
        levels = schedule_sigmas(schedule, 8, TRAIN)
        got = sched.sigmas.numpy()
        if name.startswith("Heun"):
            got = every_other(got)
        assert np.array_equal(got, levels), (name, schedule)
        assert sched.schedule_type == schedule and sched.num_inference_steps == len(levels) - 1
    sched.set_schedule_type("automatic")
    sched.set_timesteps(8)
    assert sched.schedule_type is None and len(sched.sigmas) == 2 * 8


def test_schedule_type_errors():
    with pytest.raises(ValueError, match="DDIMScheduler takes no schedule type .*k-diffusion samplers"):
        scheduler_class("DDIMScheduler")(**SDXL).set_schedule_type("karras")
    with pytest.raises(ValueError, match="unknown schedule type 'sgm'"):
        scheduler_class("EulerDiscreteScheduler")(**SDXL).set_schedule_type("sgm")
    scheduler_class("DDIMScheduler")(**SDXL).set_schedule_type("automatic")  # the default is always fine
