"""DPMSolverSDEScheduler: our Brownian tree against torchsde's, and the scheduler against diffusers 0.42.1.

diffusers' DPMSolverSDEScheduler needs torchsde (a test-only reference here; the package does not use it), so the
parity tests skip without it; the tree's own properties are tested either way.
"""

from __future__ import annotations

import contextlib

import diffusers
import pytest
import torch
from k_helpers import check_schedules, denoise_loop
from scheduler_helpers import SDXL, SDXL_SCHEDULER_JSON, STEP_COUNTS, assert_loops_match, rel_err, start_sample

from sdxl.schedulers.dpm_sde import BrownianInterval, DPMSolverSDEScheduler

# diffusers 0.42 calls numpy on torch tensors in its KDPM2/LMS/SDE schedules: thousands of DeprecationWarnings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEEDED = {**SDXL, "noise_sampler_seed": 42}


def needs_torchsde():
    return pytest.importorskip("torchsde", reason="torchsde is the test-only reference for the Brownian tree")


def pair(**config):
    needs_torchsde()
    return DPMSolverSDEScheduler(**config), diffusers.DPMSolverSDEScheduler(**config)


# --- the Brownian tree ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_brownian_interval_matches_torchsde(dtype):
    torchsde = needs_torchsde()
    t0, t1 = 0.0291675, 14.614642
    queries = [(13.0, 14.614642), (7.25, 13.0), (7.25, 7.3), (0.0291675, 0.5), (0.3, 9.9), (0.02, 20.0), (3.0, 3.0)]
    for entropy in (0, 42, 2**40 + 7):
        ours = BrownianInterval(t0, t1, (2, 3, 4), dtype, "cpu", entropy)
        ref = torchsde.BrownianInterval(
            t0=t0,
            t1=t1,
            size=(2, 3, 4),
            dtype=dtype,
            device="cpu",
            entropy=entropy,
            tol=1e-6,
            pool_size=24,
            halfway_tree=True,
        )
        for ta, tb in queries:
            with pytest.warns(UserWarning) if ta < t0 else contextlib.nullcontext():
                expected = ref(ta, tb)
            assert torch.equal(ours(ta, tb), expected), (entropy, ta, tb)


def test_brownian_increments_add_up():
    """W(a, c) = W(a, b) + W(b, c) on tree nodes, and the variance of an increment is its length."""
    tree = BrownianInterval(0.0, 16.0, (20000,), torch.float64, "cpu", entropy=3)
    whole, left, right = tree(0.0, 16.0), tree(0.0, 8.0), tree(8.0, 16.0)
    assert torch.allclose(left + right, whole, rtol=0, atol=1e-12)
    assert abs(tree(2.0, 6.0).var().item() - 4.0) < 0.3
    again = BrownianInterval(0.0, 16.0, (20000,), torch.float64, "cpu", entropy=3)
    assert torch.equal(again(2.0, 6.0), tree(2.0, 6.0))  # a seed fixes the path, whatever the query order


# --- schedules ---


@pytest.mark.parametrize("kind", [{}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}])
def test_schedule_matches_diffusers(spacing, kind):
    needs_torchsde()
    check_schedules(
        DPMSolverSDEScheduler, diffusers.DPMSolverSDEScheduler, {**SDXL, "timestep_spacing": spacing, **kind}
    )


def test_beta_schedule_matches_diffusers():
    """Sigmas exact; float64 fractional timesteps within 1e-9 (our scipy-free Beta quantiles, last bits)."""
    ours, ref = pair(**SDXL, use_beta_sigmas=True)
    for n in STEP_COUNTS:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert torch.equal(ours.sigmas, ref.sigmas)
        assert (ours.timesteps - ref.timesteps).abs().max() <= 1e-9


# --- step loops ---


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_step_loop_matches_diffusers(dtype, prediction):
    ours, ref = pair(**SEEDED, prediction_type=prediction)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert_loops_match(denoise_loop(ours, start_sample(dtype)), denoise_loop(ref, start_sample(dtype)))


@pytest.mark.parametrize("steps", [1, 2, 3, 25])
@pytest.mark.parametrize("kind", [{}, {"use_karras_sigmas": True}])
def test_step_counts_match_diffusers(steps, kind):
    ours, ref = pair(**SEEDED, **kind)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert_loops_match(denoise_loop(ours, start_sample()), denoise_loop(ref, start_sample()))


def test_s_noise_matches_diffusers():
    ours, ref = pair(**SEEDED)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    assert_loops_match(denoise_loop(ours, start_sample(), s_noise=0.9), denoise_loop(ref, start_sample(), s_noise=0.9))


def test_unseeded_tree_draws_from_the_global_rng_like_diffusers():
    ours, ref = pair(**SDXL)
    runs = []
    for sched in (ours, ref):
        sched.set_timesteps(3)
        torch.manual_seed(11)
        runs.append(denoise_loop(sched, start_sample()))
    assert_loops_match(*runs)


def test_from_sdxl_euler_config_matches_diffusers():
    config = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON).config
    ours, ref = DPMSolverSDEScheduler.from_config(config, noise_sampler_seed=1), None
    ref = pair()[1].from_config(config, noise_sampler_seed=1)
    for key in ours.config.field_names():
        assert ours.config[key] == ref.config[key], key
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    assert_loops_match(denoise_loop(ours, start_sample()), denoise_loop(ref, start_sample()))


def test_begin_index_and_add_noise_match_diffusers():
    ours, ref = pair(**SEEDED)
    results = []
    for sched in (ours, ref):
        sched.set_timesteps(12)
        sched.set_begin_index(6)
        x = sched.add_noise(start_sample() / 10, start_sample() / 5, sched.timesteps[6:7].repeat(2))
        results.append((x, denoise_loop(sched, x, start=6)))
    assert rel_err(results[0][0], results[1][0]) == 0.0
    assert_loops_match(results[0][1], results[1][1])


# --- errors and the no-sync guard ---


def test_unsupported_values_are_rejected():
    with pytest.raises(ValueError, match="DPMSolverSDEScheduler does not support prediction_type='sample'"):
        DPMSolverSDEScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="does not support custom timesteps"):
        DPMSolverSDEScheduler(**SDXL).set_timesteps(timesteps=[900, 100])


def test_step_does_not_synchronise(no_sync):
    sched = DPMSolverSDEScheduler(**SEEDED)
    sched.set_timesteps(5)
    x = start_sample()
    t0 = sched.timesteps[0]
    sample = sched.step(sched.scale_model_input(x, t0) * 0.1, t0, x).prev_sample
    with no_sync:
        for t in sched.timesteps[1:]:
            sample = sched.step(sched.scale_model_input(sample, t) * 0.1, t, sample).prev_sample
    if pytest.importorskip("torchsde", reason="reference") is not None:
        ref = diffusers.DPMSolverSDEScheduler(**SEEDED)
        ref.set_timesteps(5)
        y = x
        for t in ref.timesteps:
            y = ref.step(ref.scale_model_input(y, t) * 0.1, t, y).prev_sample
        assert rel_err(sample, y) <= 1e-6
