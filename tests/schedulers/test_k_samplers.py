"""Parity with diffusers 0.42.1 of the k-diffusion ports: Euler a, Heun, DPM2, DPM2 a, LMS.

Schedules (timesteps, sigmas, init_noise_sigma) for N in STEP_COUNTS across options, step loops on a fixed fake
model in fp32/fp64/fp16 (stochastic ones with the same seeded generator), from_config from SDXL's Euler config,
set_begin_index mid-schedule, add_noise, errors, and the no-sync guard.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from k_helpers import check_schedules, denoise_loop
from scheduler_helpers import (
    SDXL,
    SDXL_SCHEDULER_JSON,
    SIGMA_KINDS,
    STEP_COUNTS,
    assert_loops_match,
    rel_err,
    start_sample,
)

from sdxl.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from sdxl.schedulers.heun import HeunDiscreteScheduler
from sdxl.schedulers.kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from sdxl.schedulers.lms import LMSDiscreteScheduler

# diffusers 0.42 calls numpy on torch tensors in its KDPM2/LMS/SDE schedules: thousands of DeprecationWarnings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OURS = {
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
    "KDPM2AncestralDiscreteScheduler": KDPM2AncestralDiscreteScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
}
NAMES = list(OURS)
STOCHASTIC = {"EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
SIGMA_SCHEDULED = [n for n in NAMES if n != "EulerAncestralDiscreteScheduler"]


def pair(name: str, **config):
    return OURS[name](**config), getattr(diffusers, name)(**config)


def loop(name: str, sched, x, start: int = 0):
    kwargs = {"generator": torch.Generator().manual_seed(7)} if name in STOCHASTIC else {}
    return denoise_loop(sched, x, start=start, **kwargs)


# --- schedules ---


@pytest.mark.parametrize("name", NAMES)
def test_schedule_matches_diffusers(name, spacing):
    check_schedules(OURS[name], getattr(diffusers, name), {**SDXL, "timestep_spacing": spacing})


@pytest.mark.parametrize("name", SIGMA_SCHEDULED)
@pytest.mark.parametrize("kind", ["karras", "exponential"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sigma_schedules_match_diffusers(name, kind, spacing):
    check_schedules(OURS[name], getattr(diffusers, name), {**SDXL, "timestep_spacing": spacing, **SIGMA_KINDS[kind]})


@pytest.mark.parametrize("name", SIGMA_SCHEDULED)
def test_beta_sigmas_match_diffusers(name):
    """Sigmas are exact; KDPM2 keeps float64 fractional timesteps, where our scipy-free Beta quantiles differ
    from scipy's in the last bits (<= 1e-9 of a timestep)."""
    ours, ref = pair(name, **SDXL, use_beta_sigmas=True)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert torch.equal(ours.sigmas, ref.sigmas)
        assert ours.timesteps.dtype == ref.timesteps.dtype
        assert (ours.timesteps - ref.timesteps).abs().max() <= 1e-9


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("EulerAncestralDiscreteScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
        ("EulerAncestralDiscreteScheduler", {"beta_schedule": "linear", "steps_offset": 0}),
        ("HeunDiscreteScheduler", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}),
        ("HeunDiscreteScheduler", {"use_beta_sigmas": True, "beta_schedule": "linear"}),
        ("KDPM2DiscreteScheduler", {"use_exponential_sigmas": True, "steps_offset": 0}),
        ("KDPM2AncestralDiscreteScheduler", {"num_train_timesteps": 500, "timestep_spacing": "trailing"}),
        ("LMSDiscreteScheduler", {"trained_betas": torch.linspace(0.0001, 0.03, 1000).tolist()}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(k for k in v),
)
def test_schedule_options_match_diffusers(name, config):
    check_schedules(OURS[name], getattr(diffusers, name), {**SDXL, **config})


def test_heun_custom_timesteps_match_diffusers():
    ours, ref = pair("HeunDiscreteScheduler", **SDXL)
    ours.set_timesteps(timesteps=[999, 800, 601.5, 400, 10])
    ref.set_timesteps(timesteps=[999, 800, 601.5, 400, 10])
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)


def test_second_order_timesteps_have_2n_minus_1_entries():
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        sched = OURS[name](**SDXL)
        assert sched.order == 2
        sched.set_timesteps(10)
        assert len(sched.timesteps) == 19


# --- step loops ---


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_step_loop_matches_diffusers(name, dtype, prediction):
    ours, ref = pair(name, **SDXL, prediction_type=prediction)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x = start_sample(dtype)
    # LMS coefficients come from a float64 quadrature here and scipy's quad over a float32 integrand in diffusers:
    # equal to ~1e-7, which an fp16 product can round one half-precision ulp apart
    tol = 1e-3 if (name, dtype) == ("LMSDiscreteScheduler", torch.float16) else 1e-6
    assert_loops_match(loop(name, ours, x), loop(name, ref, x), tol=tol)


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "LMSDiscreteScheduler"])
def test_sample_prediction_matches_diffusers(name):
    ours, ref = pair(name, **SDXL, prediction_type="sample")
    ours.set_timesteps(6)
    ref.set_timesteps(6)
    assert_loops_match(loop(name, ours, start_sample()), loop(name, ref, start_sample()))


@pytest.mark.parametrize("name", SIGMA_SCHEDULED)
@pytest.mark.parametrize("kind", ["karras", "exponential", "beta"])
def test_step_loop_sigma_schedules_match_diffusers(name, kind):
    ours, ref = pair(name, **{**SDXL, "timestep_spacing": "trailing", **SIGMA_KINDS[kind]})
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    assert_loops_match(loop(name, ours, start_sample()), loop(name, ref, start_sample()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_short_schedules_match_diffusers(name, steps):
    ours, ref = pair(name, **SDXL)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(loop(name, ours, start_sample()), loop(name, ref, start_sample()))


def test_fifty_step_heun_matches_diffusers():
    ours, ref = pair("HeunDiscreteScheduler", **SDXL, use_karras_sigmas=True)
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    assert_loops_match(loop("HeunDiscreteScheduler", ours, start_sample()), loop("x", ref, start_sample()))


def test_heun_clip_sample_matches_diffusers():
    ours, ref = pair("HeunDiscreteScheduler", **SDXL, clip_sample=True, clip_sample_range=0.5)
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    assert_loops_match(loop("x", ours, start_sample()), loop("x", ref, start_sample()))


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_ancestral_noise_comes_from_the_generator(name):
    sched = OURS[name](**SDXL)
    runs = []
    for seed in (1, 1, 2):
        sched.set_timesteps(4)
        runs.append(denoise_loop(sched, start_sample(), generator=torch.Generator().manual_seed(seed))[-1][1])
    assert rel_err(runs[0], runs[1]) == 0.0
    assert rel_err(runs[0], runs[2]) > 1e-3


def test_lms_order_matches_diffusers():
    ours, ref = pair("LMSDiscreteScheduler", **SDXL)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    a = denoise_loop(ours, start_sample(), order=2)
    assert_loops_match(a, denoise_loop(ref, start_sample(), order=2))


# --- from_config, mid-schedule starts, add_noise ---


@pytest.mark.parametrize("name", NAMES)
def test_from_sdxl_euler_config_matches_diffusers(name):
    ours = OURS[name].from_config(diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = getattr(diffusers, name).from_config(
        diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config
    )
    for key in ours.config.field_names():
        assert ours.config[key] == ref.config[key], key
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    assert_loops_match(loop(name, ours, start_sample()), loop(name, ref, start_sample()))


@pytest.mark.parametrize("name", NAMES)
def test_begin_index_and_add_noise_match_diffusers(name):
    """The img2img / refiner start: set_begin_index, add_noise at the start timestep, then the loop."""
    ours, ref = pair(name, **SDXL)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(12)
        start = 6 if sched.order == 2 else 4  # 2nd-order: an even index is the first pass of a step
        sched.set_begin_index(start)
        x = sched.add_noise(start_sample() / 10, start_sample() / 5, sched.timesteps[start : start + 1].repeat(2))
        results.append((x, loop(name, sched, x, start=start)))
    assert rel_err(results[0][0], results[1][0]) == 0.0
    assert_loops_match(results[0][1], results[1][1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_lookup_matches_diffusers(name, dtype):
    ours, ref = pair(name, **SDXL)
    x0, noise = start_sample(dtype) / 5, start_sample(dtype) / 5
    for sched in (ours, ref):
        sched.set_timesteps(10)
    t = ours.timesteps[[0, 5]]
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == b.dtype and rel_err(a, b) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_start_from_a_timestep_without_begin_index(name):
    ours, ref = pair(name, **SDXL)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    start = 6 if ours.order == 2 else 3  # the lookup takes the second of a duplicated timestep: a step's first pass
    assert_loops_match(loop(name, ours, start_sample(), start=start), loop(name, ref, start_sample(), start=start))
    assert ours.step_index == ref.step_index


def test_compatibles_include_the_new_schedulers():
    found = {cls.__name__ for cls in EulerAncestralDiscreteScheduler(**SDXL).compatibles}
    assert set(NAMES) <= found


# --- errors ---


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_values_name_key_and_value(name):
    with pytest.raises(ValueError, match=rf"{name} does not support timestep_spacing='uniform'; supported values"):
        OURS[name](timestep_spacing="uniform")


@pytest.mark.parametrize(
    "name", ["EulerAncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"]
)
def test_sample_prediction_is_rejected_where_diffusers_lacks_it(name):
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        OURS[name](prediction_type="sample")


def test_two_sigma_schedules_are_rejected():
    with pytest.raises(ValueError, match="only one of"):
        HeunDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_is_a_type_error(name):
    with pytest.raises(TypeError, match="unexpected config keys"):
        OURS[name](use_lu_lambdas=True)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "HeunDiscreteScheduler"])
def test_custom_timesteps_are_rejected(name):
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        OURS[name](**SDXL).set_timesteps(timesteps=[900, 500])


def test_heun_custom_timesteps_rejected_with_karras():
    with pytest.raises(ValueError, match="use_karras_sigmas=True"):
        HeunDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 500])


def test_euler_a_integer_timestep_is_rejected():
    sched = EulerAncestralDiscreteScheduler(**SDXL)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="integer timestep"):
        sched.step(start_sample(), 3, start_sample())


def test_lms_bad_order_is_rejected():
    sched = LMSDiscreteScheduler(**SDXL)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="order must be a positive integer"):
        sched.step(start_sample(), sched.timesteps[0], start_sample(), order=0)


def test_unknown_timestep_is_a_value_error():
    sched = HeunDiscreteScheduler(**SDXL)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="not in HeunDiscreteScheduler.timesteps"):
        sched.scale_model_input(start_sample(), torch.tensor(123.5))


# --- no host syncs inside the loop ---


@pytest.mark.parametrize("name", NAMES)
def test_step_does_not_synchronise(name, no_sync):
    ours, ref = pair(name, **SDXL)
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    x = start_sample()
    t0 = ours.timesteps[0]
    first = ours.step(ours.scale_model_input(x, t0) * 0.1, t0, x, generator=torch.Generator().manual_seed(1))
    samples, sample = [], first.prev_sample
    g = torch.Generator().manual_seed(2)
    with no_sync:
        for t in ours.timesteps[1:]:
            sample = ours.step(ours.scale_model_input(sample, t) * 0.1, t, sample, generator=g).prev_sample
            samples.append(sample)
    kwargs = {"generator": torch.Generator().manual_seed(1)} if name in STOCHASTIC else {}
    ref_sample = ref.step(ref.scale_model_input(x, t0) * 0.1, t0, x, **kwargs).prev_sample
    kwargs = {"generator": torch.Generator().manual_seed(2)} if name in STOCHASTIC else {}
    for t, mine in zip(ref.timesteps[1:], samples):
        ref_sample = ref.step(ref.scale_model_input(ref_sample, t) * 0.1, t, ref_sample, **kwargs).prev_sample
        assert rel_err(mine, ref_sample) <= 1e-6
