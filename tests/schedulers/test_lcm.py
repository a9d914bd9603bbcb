"""LCMScheduler against diffusers 0.42: config, schedules (steps, original steps, strength, custom timesteps), step
loops with their noise, add_noise, errors and warnings."""

from __future__ import annotations

import logging

import diffusers
import pytest
import torch
from scheduler_helpers import (
    PREDICTIONS,
    SDXL_SCHEDULER_JSON,
    fake_model,
    normalized,
    scheduler_pair,
    start_sample,
)

import sdxl
from sdxl.schedulers.lcm import LCMScheduler

CONFIGS = {
    "default": {},
    "original-30": {"original_inference_steps": 30},
    "zero-snr-v": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    "clip": {"clip_sample": True, "clip_sample_range": 0.5},
    "thresholding": {"thresholding": True, "sample_max_value": 2.0},
    "final-alpha": {"set_alpha_to_one": False, "timestep_scaling": 4.0},
}
SCHEDULES = {
    "4": {"num_inference_steps": 4},
    "1": {"num_inference_steps": 1},
    "8-strength-0.5": {"num_inference_steps": 8, "strength": 0.5},
    "4-of-20": {"num_inference_steps": 4, "original_inference_steps": 20},
    "custom": {"timesteps": [999, 499]},
    "custom-strength": {"timesteps": [999, 759, 499, 259], "strength": 0.5},
}


def assert_schedule_equal(ours, ref) -> None:
    """Same int64 timesteps, step count and init_noise_sigma (diffusers' LCM keeps no sigmas; ours are empty)."""
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, ref.timesteps), (ours.timesteps, ref.timesteps)
    assert ours.num_inference_steps == ref.num_inference_steps
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0
    assert ours.sigmas.numel() == 0


def pair(**config):
    return scheduler_pair("LCMScheduler")(**config)


def lcm_loop(scheduler, sample: torch.Tensor, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prev_sample, denoised) per step, with the step noise drawn from a generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for i, t in enumerate(scheduler.timesteps):
        out = scheduler.step(fake_model(sample, i), t, sample, generator=generator)
        sample = out.prev_sample
        records.append((out.prev_sample, out.denoised))
    return records


@pytest.mark.parametrize("config", list(CONFIGS))
def test_config_and_training_schedule_match_diffusers(config):
    ours, ref = pair(**CONFIGS[config])
    assert normalized(ours.config) == normalized(ref.config)
    assert_schedule_equal(ours, ref)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(ours.final_alpha_cumprod, ref.final_alpha_cumprod)
    assert [c.__name__ for c in ours.compatibles] == [c.__name__ for c in ref.compatibles] == ["LCMScheduler"]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_match_diffusers(schedule, caplog):
    ours, ref = pair()
    with caplog.at_level(logging.ERROR):  # custom schedules off the distillation grid warn (tested below)
        ours.set_timesteps(**SCHEDULES[schedule])
        ref.set_timesteps(**SCHEDULES[schedule])
    assert_schedule_equal(ours, ref)
    assert ours.custom_timesteps == ("timesteps" in SCHEDULES[schedule])
    assert [ours.previous_timestep(t) for t in ours.timesteps] == [ref.previous_timestep(t) for t in ref.timesteps]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("schedule", ["4", "1", "8-strength-0.5", "custom-strength"])
def test_step_loops_equal_diffusers_exactly(config, schedule, dtype, caplog):
    ours, ref = pair(**CONFIGS[config])
    with caplog.at_level(logging.ERROR):
        for s in (ours, ref):
            s.set_timesteps(**SCHEDULES[schedule])
    x = start_sample(dtype) / 5
    got, want = lcm_loop(ours, x), lcm_loop(ref, x)
    assert len(got) == len(want) == len(ref.timesteps)
    for step, ((a_prev, a_den), (b_prev, b_den)) in enumerate(zip(got, want)):
        assert a_prev.dtype == b_prev.dtype and torch.equal(a_prev, b_prev), step
        assert torch.equal(a_den, b_den), step


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_each_prediction_type_and_the_tuple_output(prediction):
    ours, ref = pair(prediction_type=prediction)
    for s in (ours, ref):
        s.set_timesteps(3)
    x = start_sample()
    t = ours.timesteps[0]
    got = ours.step(fake_model(x, 0), t, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    want = ref.step(fake_model(x, 0), t, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    assert len(got) == len(want) == 2
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_int_timesteps_and_the_boundary_scalings_match_diffusers(dtype):
    """`step(..., int(t), ...)` as diffusers documents it: the scalings come from the int (float64 arithmetic)."""
    ours, ref = pair(timestep_scaling=3.3)
    for s in (ours, ref):
        s.set_timesteps(4)
    x = start_sample(dtype) / 5
    generators = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    xa = xb = x
    for i, t in enumerate(ref.timesteps.tolist()):
        a = ours.step(fake_model(xa, i), t, xa, generator=generators[0])
        b = ref.step(fake_model(xb, i), t, xb, generator=generators[1])
        assert torch.equal(a.denoised, b.denoised) and torch.equal(a.prev_sample, b.prev_sample), i
        xa, xb = a.prev_sample, b.prev_sample
        for t_given in (t, torch.tensor(t)):
            assert ours.get_scalings_for_boundary_condition_discrete(t_given) == tuple(
                ref.get_scalings_for_boundary_condition_discrete(t_given)
            )
    assert ours.sigma_data == ref.sigma_data == 0.5


def test_the_last_step_draws_no_noise_and_returns_the_estimate():
    ours, _ = pair()
    ours.set_timesteps(2)
    x = start_sample()
    ours.step(fake_model(x, 0), ours.timesteps[0], x)
    last = ours.step(fake_model(x, 1), ours.timesteps[1], x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(last.prev_sample, last.denoised)


def test_img2img_start_mid_schedule_and_add_noise_match_diffusers():
    ours, ref = pair()
    for s in (ours, ref):
        s.set_timesteps(6)
        s.set_begin_index(3)
    x = start_sample()
    noise = start_sample() / 5
    at = ours.timesteps[3:4].repeat(2)
    assert torch.equal(ours.add_noise(x, noise, at), ref.add_noise(x, noise, at))
    assert torch.equal(ours.get_velocity(x, noise, at), ref.get_velocity(x, noise, at))
    got = lcm_loop_from(ours, x, 3)
    want = lcm_loop_from(ref, x, 3)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def lcm_loop_from(scheduler, sample, start):
    generator = torch.Generator().manual_seed(2)
    for i, t in enumerate(scheduler.timesteps[start:]):
        sample = scheduler.step(fake_model(sample, i), t, sample, generator=generator).prev_sample
    return sample


def test_from_the_sdxl_scheduler_config_matches_diffusers():
    base = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON)
    ours = sdxl.LCMScheduler.from_config(sdxl.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config)
    ref = diffusers.LCMScheduler.from_config(base.config)
    assert normalized(ours.config) == normalized(ref.config)
    for s in (ours, ref):
        s.set_timesteps(4)
    assert_schedule_equal(ours, ref)


def test_saved_config_loads_in_diffusers(tmp_path):
    ours = LCMScheduler(original_inference_steps=40, timestep_scaling=5.0)
    ours.save_pretrained(tmp_path)
    ref = diffusers.LCMScheduler.from_pretrained(tmp_path)

    def public(config):
        return {k: v for k, v in normalized(config).items() if not k.startswith("_")}

    assert public(ref.config) == public(ours.config)
    assert public(LCMScheduler.from_pretrained(tmp_path).config) == public(ours.config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timesteps": [499, 999]}, "must be in descending order"),
        ({"timesteps": [1000, 499]}, "must start below num_train_timesteps=1000"),
        ({"num_inference_steps": 60}, "lower num_inference_steps to at most 50 or raise strength above 1.2"),
        ({"num_inference_steps": 60, "strength": 2.0}, "cannot be larger than original_inference_steps=50"),
        ({"num_inference_steps": 4, "original_inference_steps": 2000}, "cannot be larger than num_train_timesteps"),
        ({"num_inference_steps": 8, "strength": 0.1}, "lower num_inference_steps to at most 5 or raise strength"),
        ({"num_inference_steps": 1001}, "cannot be larger than num_train_timesteps=1000"),
    ],
)
def test_bad_schedules_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LCMScheduler().set_timesteps(**kwargs)


def test_custom_sigmas_and_bad_configs_are_refused():
    with pytest.raises(TypeError):
        LCMScheduler().set_timesteps(sigmas=[14.6, 1.0, 0.0])  # diffusers' LCM has no sigmas argument either
    with pytest.raises(ValueError, match="original_inference_steps must be a positive integer"):
        LCMScheduler(original_inference_steps=0)
    scheduler = LCMScheduler()
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 999, torch.zeros(1, 4, 8, 8))
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep 500 is not in LCMScheduler.timesteps"):
        scheduler.step(torch.zeros(1, 4, 8, 8), 500, torch.zeros(1, 4, 8, 8))


def test_custom_timesteps_off_the_distillation_schedule_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="sdxl.schedulers.lcm"):
        LCMScheduler().set_timesteps(timesteps=[899, 500])
    text = caplog.text
    assert "first custom timestep is 899" in text and "off the distillation schedule" in text and "[500]" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdxl.schedulers.lcm"):
        LCMScheduler(original_inference_steps=2).set_timesteps(timesteps=[999, 499, 0])
    assert "3 custom timesteps exceed the 2" in caplog.text
