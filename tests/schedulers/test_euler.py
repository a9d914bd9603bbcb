"""EulerDiscreteScheduler parity with diffusers 0.42.1: schedules, step loops, add_noise, mid-schedule starts."""

from __future__ import annotations

import itertools

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

from sdxl.schedulers.euler import EulerDiscreteScheduler

pair = scheduler_pair("EulerDiscreteScheduler")


def check_schedules(config: dict) -> None:
    ours, ref = pair(**config)
    assert_schedule_equal(ours, ref)  # the training schedule before set_timesteps
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


# --- schedules ---


def test_schedule_matches_diffusers(spacing, kind, final):
    check_schedules({**SDXL, "timestep_spacing": spacing, "final_sigmas_type": final, **SIGMA_KINDS[kind]})


@pytest.mark.parametrize(
    "config",
    [
        {"interpolation_type": "log_linear"},
        {"interpolation_type": "log_linear", "use_karras_sigmas": True, "timestep_spacing": "trailing"},
        {"prediction_type": "v_prediction", "timestep_type": "continuous"},
        {"prediction_type": "v_prediction", "timestep_type": "continuous", "use_karras_sigmas": True},
        {"prediction_type": "sample"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 10.0},
        {"use_exponential_sigmas": True, "sigma_min": 0.1},
        {"use_beta_sigmas": True, "sigma_max": 12.0},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"trained_betas": torch.linspace(0.0001, 0.03, 1000).tolist(), "steps_offset": 0},
        {"num_train_timesteps": 500, "timestep_spacing": "trailing"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "trained_betas") or "trained_betas",
)
def test_schedule_options_match_diffusers(config):
    check_schedules({**SDXL, **config})


@pytest.mark.slow
def test_full_schedule_matrix_matches_diffusers():
    axes = itertools.product(
        ["leading", "trailing", "linspace"],
        list(SIGMA_KINDS),
        ["epsilon", "v_prediction", "sample"],
        ["zero", "sigma_min"],
        ["linear", "log_linear"],
        ["discrete", "continuous"],
        [False, True],
    )
    for spacing, kind, prediction, final, interpolation, ttype, zero_snr in axes:
        check_schedules(
            {
                **SDXL,
                **SIGMA_KINDS[kind],
                "timestep_spacing": spacing,
                "prediction_type": prediction,
                "final_sigmas_type": final,
                "interpolation_type": interpolation,
                "timestep_type": ttype,
                "rescale_betas_zero_snr": zero_snr,
            }
        )


def test_custom_timesteps_and_sigmas_match_diffusers():
    ours, ref = pair(**SDXL)
    for kwargs in ({"timesteps": [999, 800, 601.5, 400, 10]}, {"sigmas": [14.6, 7.1, 3.3, 1.0, 0.2, 0.0]}):
        ours.set_timesteps(**kwargs)
        ref.set_timesteps(**kwargs)
        assert_schedule_equal(ours, ref)


# --- step loops ---


def test_step_loop_matches_diffusers(prediction, dtype):
    ours, ref = pair(**SDXL, prediction_type=prediction)
    ours.set_timesteps(12)
    ref.set_timesteps(12)
    x = start_sample(dtype)
    # fp16 follows diffusers' mixed precision op for op, so the same tolerance holds
    assert_loops_match(denoise(ours, x), denoise(ref, x))


@pytest.mark.parametrize(
    "config",
    [
        {"use_karras_sigmas": True, "timestep_spacing": "trailing"},
        {"final_sigmas_type": "sigma_min", "timestep_spacing": "linspace", "use_beta_sigmas": True},
        {"interpolation_type": "log_linear", "use_exponential_sigmas": True},
        {"timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ],
)
def test_step_loop_options_match_diffusers(config):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    assert_loops_match(denoise(ours, start_sample()), denoise(ref, start_sample()))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_short_schedules_match_diffusers(steps):
    ours, ref = pair(**SDXL, use_karras_sigmas=True)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(denoise(ours, start_sample()), denoise(ref, start_sample()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_churn_with_generator_matches_diffusers(dtype):
    ours, ref = pair(**SDXL)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    churn = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 8.0, "s_noise": 1.003}
    a = denoise(ours, start_sample(dtype), generator=torch.Generator().manual_seed(7), **churn)
    b = denoise(ref, start_sample(dtype), generator=torch.Generator().manual_seed(7), **churn)
    assert_loops_match(a, b)
    # the churn really added noise: without it the last sample differs
    ours.set_timesteps(10)
    plain = denoise(ours, start_sample(dtype))
    assert rel_err(plain[-1][1], a[-1][1]) > 1e-3


def test_return_tuple_matches_output_object():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    x = start_sample()
    t = ours.timesteps[0]
    out = ours.step(torch.ones_like(x), t, ours.scale_model_input(x, t), return_dict=False)
    expected = ref.step(torch.ones_like(x), ref.timesteps[0], ref.scale_model_input(x, t), return_dict=False)
    assert len(out) == len(expected) == 2
    for a, b in zip(out, expected):
        assert rel_err(a, b) == 0.0


# --- mid-schedule starts and add_noise ---


@pytest.mark.parametrize("denoising_start", [0.5, 0.8])
def test_refiner_handoff_matches_diffusers(denoising_start):
    """The img2img pipeline's denoising_start path: set_begin_index, add_noise at the cut, then the loop."""
    ours, ref = pair(**SDXL)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(30)
        cutoff = round(1000 - denoising_start * 1000)
        n = int((sched.timesteps < cutoff).sum())
        t_start = len(sched.timesteps) - n
        sched.set_begin_index(t_start)
        noise = start_sample() / 5
        x = sched.add_noise(start_sample() / 10, noise, sched.timesteps[t_start : t_start + 1].repeat(2))
        results.append((x, denoise(sched, x, start=t_start)))
    assert rel_err(results[0][0], results[1][0]) == 0.0
    assert_loops_match(results[0][1], results[1][1])


def test_start_from_a_timestep_without_begin_index():
    """Without set_begin_index the first call looks the timestep up (the second match when duplicated)."""
    ours, ref = pair(**SDXL)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert_loops_match(denoise(ours, start_sample(), start=7), denoise(ref, start_sample(), start=7))
    assert ours.step_index == ref.step_index == 20
    dup = torch.tensor([900.0, 500.0, 500.0, 100.0])
    assert ours.index_for_timestep(torch.tensor(500.0), dup) == ref.index_for_timestep(torch.tensor(500.0), dup) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_matches_diffusers(dtype):
    ours, ref = pair(**SDXL)
    x0, noise = start_sample(dtype) / 5, start_sample(dtype) / 5
    # before set_timesteps (training schedule), after it, after set_begin_index and after a step
    t = torch.tensor([999.0, 500.0])
    assert rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) == 0.0
    for sched in (ours, ref):
        sched.set_timesteps(10)
    t = ours.timesteps[[2, 5]]
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == b.dtype and rel_err(a, b) == 0.0
    for sched in (ours, ref):
        sched.set_begin_index(3)
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert rel_err(a, b) == 0.0
    for sched in (ours, ref):
        sched.set_timesteps(10)
        sched.set_begin_index(3)
        x = sched.scale_model_input(start_sample(dtype), sched.timesteps[3])
        sched.step(x, sched.timesteps[3], start_sample(dtype))
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert ours.step_index == ref.step_index == 4
    assert rel_err(a, b) == 0.0


def test_init_noise_sigma_follows_spacing():
    for spacing in ("leading", "trailing", "linspace"):
        ours, ref = pair(**{**SDXL, "timestep_spacing": spacing})
        ours.set_timesteps(30)
        ref.set_timesteps(30)
        assert torch.equal(ours.init_noise_sigma, ref.init_noise_sigma)


# --- errors and guards ---


def test_integer_timestep_is_rejected():
    sched = EulerDiscreteScheduler(**SDXL)
    sched.set_timesteps(5)
    x = start_sample()
    for bad in (3, torch.tensor(3)):
        with pytest.raises(ValueError, match="integer timestep"):
            sched.step(x, bad, x)


def test_unknown_timestep_is_a_value_error():
    sched = EulerDiscreteScheduler(**SDXL)
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="not in EulerDiscreteScheduler.timesteps"):
        sched.scale_model_input(start_sample(), torch.tensor(123.5))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timestep_spacing", "uniform"),
        ("interpolation_type", "cubic"),
        ("timestep_type", "edm"),
        ("final_sigmas_type", "one"),
        ("prediction_type", "flow_prediction"),
        ("beta_schedule", "sigmoid"),
    ],
)
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(
        ValueError, match=rf"EulerDiscreteScheduler does not support {key}='{value}'; supported values"
    ):
        EulerDiscreteScheduler(**{key: value})


def test_two_sigma_schedules_are_rejected():
    with pytest.raises(ValueError, match="only one of"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)


def test_custom_timesteps_rejected_with_sigma_schedule_or_continuous_v():
    with pytest.raises(ValueError, match="use_karras_sigmas=True"):
        EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="continuous"):
        EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction").set_timesteps(
            timesteps=[900, 500]
        )


def test_step_warns_without_scale_model_input(caplog):
    sched = EulerDiscreteScheduler(**SDXL)
    sched.set_timesteps(3)
    x = start_sample()
    sched.step(x, sched.timesteps[0], x)
    assert "scale_model_input" in caplog.text


def test_step_does_not_synchronise(no_sync):
    sched = EulerDiscreteScheduler(**SDXL, use_karras_sigmas=True)
    sched.set_timesteps(6)
    ref = diffusers.EulerDiscreteScheduler(**SDXL, use_karras_sigmas=True)
    ref.set_timesteps(6)
    x = start_sample()
    churn = {"s_churn": 1.0, "s_tmax": 5.0}
    first = sched.timesteps[0]
    x1 = sched.step(torch.zeros_like(x), first, sched.scale_model_input(x, first), **churn).prev_sample
    samples = []
    g = torch.Generator().manual_seed(3)
    with no_sync:
        for t in sched.timesteps[1:]:
            model_input = sched.scale_model_input(x1, t)
            x1 = sched.step(model_input * 0.1, t, x1, generator=g, **churn).prev_sample
            samples.append(x1)
    # the guard does catch syncs: diffusers' step compares a sigma tensor in Python (Tensor.__bool__)
    g = torch.Generator().manual_seed(3)
    x2 = ref.step(torch.zeros_like(x), first, ref.scale_model_input(x, first), **churn).prev_sample
    with no_sync, pytest.raises(AssertionError, match="host-device sync"):
        ref.step(x2, ref.timesteps[1], x2, **churn)
    # the same loop on diffusers' side shows the guarded loop computed the right thing
    for t, ours in zip(ref.timesteps[1:], samples):
        x2 = ref.step(ref.scale_model_input(x2, t) * 0.1, t, x2, generator=g, **churn).prev_sample
        assert rel_err(ours, x2) <= 1e-6
