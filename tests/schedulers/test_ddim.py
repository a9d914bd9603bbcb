"""DDIMScheduler parity with diffusers 0.42.1: schedules, eta noise, prediction types, dtypes, starts, from_config."""

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
    normalized,
    rel_err,
    scheduler_pair,
    start_sample,
)

from sdxl.schedulers import base, registry
from sdxl.schedulers.ddim import DDIMScheduler
from sdxl.schedulers.euler import EulerDiscreteScheduler

# the six schedulers of this module's siblings (issue 4 part B)
PART_B = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
)


pair = scheduler_pair("DDIMScheduler")


def assert_timesteps_equal(ours, ref) -> None:
    """DDIM has no sigmas: same timesteps (values, dtype), step count and init_noise_sigma."""
    assert ours.timesteps.dtype == ref.timesteps.dtype
    assert torch.equal(ours.timesteps, ref.timesteps), (ours.timesteps, ref.timesteps)
    assert ours.num_inference_steps == ref.num_inference_steps
    assert ours.init_noise_sigma == ref.init_noise_sigma


# --- schedules ---


@pytest.mark.parametrize("offset", [0, 1])
def test_schedule_matches_diffusers(spacing, offset):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, "steps_offset": offset})
    assert_timesteps_equal(ours, ref)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_timesteps_equal(ours, ref)


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("betas", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_training_schedule_matches_diffusers(betas, zero_snr):
    ours, ref = pair(beta_schedule=betas, rescale_betas_zero_snr=zero_snr)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)  # zero SNR: exactly 0 at the end, no clamp
    assert torch.equal(ours.final_alpha_cumprod, ref.final_alpha_cumprod)


# --- step loops ---


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_eta_loop_matches_diffusers(eta, dtype, spacing):
    ours, ref = pair(**{**SDXL, "timestep_spacing": spacing, "clip_sample": False, "set_alpha_to_one": False})
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    a = denoise(ours, start_sample(dtype), generator=gens[0], eta=eta)
    b = denoise(ref, start_sample(dtype), generator=gens[1], eta=eta)
    assert_loops_match(a, b)


@pytest.mark.parametrize("steps", [1, 2, 3, 25])
def test_step_counts_match_diffusers(steps):
    ours, ref = pair(**SDXL, clip_sample=False)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(1) for _ in range(2)]
    assert_loops_match(
        denoise(ours, start_sample(), generator=gens[0], eta=0.3),
        denoise(ref, start_sample(), generator=gens[1], eta=0.3),
    )


@pytest.mark.parametrize(
    "config",
    [
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        {"prediction_type": "sample"},
        {"clip_sample": True, "clip_sample_range": 2.0},
        {"thresholding": True, "sample_max_value": 1.5},
        {"set_alpha_to_one": True, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"timestep_spacing": "linspace", "steps_offset": 0},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_option_loops_match_diffusers(config, dtype):
    ours, ref = pair(**{**SDXL, **config})
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    a = denoise(ours, start_sample(dtype), generator=gens[0], eta=0.7, use_clipped_model_output=True)
    b = denoise(ref, start_sample(dtype), generator=gens[1], eta=0.7, use_clipped_model_output=True)
    assert_loops_match(a, b)


def test_variance_noise_and_generator_lists():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    x, noise = start_sample(), start_sample() / 5
    for t in ours.timesteps:
        a = ours.step(x * 0.1, t, x, eta=1.0, variance_noise=noise).prev_sample
        b = ref.step(x * 0.1, t, x, eta=1.0, variance_noise=noise).prev_sample
        assert rel_err(a, b) == 0.0
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    gens = [[torch.Generator().manual_seed(s) for s in (1, 2)] for _ in range(2)]
    assert_loops_match(
        denoise(ours, start_sample(), generator=gens[0], eta=1.0),
        denoise(ref, start_sample(), generator=gens[1], eta=1.0),
    )
    # eta > 0 really draws: other seeds give other samples
    runs = []
    for seed in (1, 2):
        ours.set_timesteps(4)
        runs.append(denoise(ours, start_sample(), generator=torch.Generator().manual_seed(seed), eta=1.0)[-1][1])
    assert rel_err(runs[0], runs[1]) > 1e-3


def test_return_tuple_matches_diffusers():
    ours, ref = pair(**SDXL)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    x = start_sample()
    a = ours.step(x * 0.1, ours.timesteps[0], x, return_dict=False)
    b = ref.step(x * 0.1, ref.timesteps[0], x, return_dict=False)
    assert len(a) == len(b) == 2 and all(rel_err(u, v) == 0.0 for u, v in zip(a, b))


# --- mid-schedule starts and add_noise ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_noise_matches_diffusers(dtype):
    ours, ref = pair(**SDXL)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x0, noise = start_sample(dtype) / 5, start_sample(dtype) / 3
    t = ours.timesteps[[2, 7]]
    a, b = ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)
    assert a.dtype == b.dtype == dtype and rel_err(a, b) == 0.0
    assert rel_err(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t)) == 0.0


def test_img2img_start_with_begin_index_matches_diffusers():
    """Our denoising loop calls set_begin_index; diffusers' DDIM indexes by timestep value: same result."""
    ours, ref = pair(**SDXL)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    ours.set_begin_index(7)
    t0 = ours.timesteps[7:8].repeat(2)
    x = ours.add_noise(start_sample() / 5, start_sample() / 3, t0)
    assert rel_err(x, ref.add_noise(start_sample() / 5, start_sample() / 3, t0)) == 0.0
    gens = [torch.Generator().manual_seed(8) for _ in range(2)]
    assert_loops_match(
        denoise(ours, x, start=7, generator=gens[0], eta=0.4), denoise(ref, x, start=7, generator=gens[1], eta=0.4)
    )


# --- from_config, compatibles ---


def test_seed_swap_euler_to_ddim_and_back_matches_diffusers():
    """The seeds' scheduler swaps: Euler (SDXL's json) -> DDIM -> Euler via from_config."""
    ours_euler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON)
    ref_euler = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON)
    ours, ref = DDIMScheduler.from_config(ours_euler.config), diffusers.DDIMScheduler.from_config(ref_euler.config)
    assert normalized(ours.config) == normalized(ref.config)
    assert ours.config.set_alpha_to_one is False and ours.config.clip_sample is False
    for n in (1, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_timesteps_equal(ours, ref)
    back, ref_back = (
        EulerDiscreteScheduler.from_config(ours.config),
        diffusers.EulerDiscreteScheduler.from_config(ref.config),
    )
    assert normalized(back.config) == normalized(ref_back.config)


def test_compatibles_list_the_registered_diffusers_compatibles():
    ours = {cls.__name__ for cls in DDIMScheduler().compatibles}
    ref = {cls.__name__ for cls in diffusers.DDIMScheduler().compatibles}
    assert set(base.KARRAS_SCHEDULERS) == ref  # diffusers 0.42 lists 15 (EDMEuler and DPMSolverSDE included)
    assert ours == ref & set(registry.MODULES)
    assert set(PART_B) <= ours
    for name in PART_B:
        assert {cls.__name__ for cls in base.scheduler_class(name)().compatibles} == ours


def test_compatibles_are_complete_once_every_scheduler_is_registered():
    missing = sorted(set(base.KARRAS_SCHEDULERS) - set(registry.MODULES))
    if missing:
        pytest.skip(f"not implemented yet: {missing}")
    assert {cls.__name__ for cls in DDIMScheduler().compatibles} == set(base.KARRAS_SCHEDULERS)


# --- errors and guards ---


@pytest.mark.parametrize(("key", "value"), [("timestep_spacing", "uniform"), ("prediction_type", "flow_prediction")])
def test_unsupported_option_value_names_key_and_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"DDIMScheduler does not support {key}={value!r}")):
        DDIMScheduler(**{key: value})


def test_step_errors():
    sched = DDIMScheduler(**SDXL)
    x = start_sample()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps=1001 cannot be larger than num_train_timesteps=1000"):
        sched.set_timesteps(1001)
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        sched.set_timesteps(timesteps=[999, 500])
    sched.set_timesteps(5)
    with pytest.raises(TypeError, match="pass eta as a keyword"):
        sched.step(x, sched.timesteps[0], x, 0.5)
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        sched.step(x, sched.timesteps[0], x, torch.Generator(), eta=1.0, variance_noise=x)
    fresh = DDIMScheduler(**SDXL)
    fresh.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep 998 is not in DDIMScheduler.timesteps"):
        fresh.step(x, 998, x)


def test_step_does_not_synchronise(no_sync):
    ours, ref = pair(**SDXL)
    ours.set_timesteps(6)
    ref.set_timesteps(6)
    ours.set_begin_index(0)
    x1 = x2 = start_sample()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    samples = []
    with no_sync:
        for t in ours.timesteps:
            x1 = ours.step(x1 * 0.1, t, x1, generator=g1, eta=0.5).prev_sample
            samples.append(x1)
    for t, mine in zip(ref.timesteps, samples):
        x2 = ref.step(x2 * 0.1, t, x2, generator=g2, eta=0.5).prev_sample
        assert rel_err(mine, x2) <= 1e-6
