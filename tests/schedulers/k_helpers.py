"""Helpers for the k-diffusion-port scheduler tests (Heun, KDPM2, LMS, DPM-SDE, Euler a): loops, schedule sweeps."""

from __future__ import annotations

import torch
from scheduler_helpers import STEP_COUNTS, assert_schedule_equal, fake_model


def denoise_loop(scheduler, sample: torch.Tensor, start: int = 0, **step_kwargs) -> list[tuple]:
    """scheduler_helpers.denoise without the generator argument (diffusers' deterministic steps do not take one)."""
    records = []
    for i, t in enumerate(scheduler.timesteps[start:]):
        model_input = scheduler.scale_model_input(sample, t)
        out = scheduler.step(fake_model(model_input, i), t, sample, **step_kwargs)
        sample = out.prev_sample
        records.append((model_input, out.prev_sample, out.pred_original_sample))
    return records


def check_schedules(ours_cls, ref_cls, config: dict, counts=STEP_COUNTS) -> None:
    """The training schedule and every step count's schedule equal diffusers' (values and dtypes)."""
    ours, ref = ours_cls(**config), ref_cls(**config)
    assert_schedule_equal(ours, ref)
    for n in counts:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)
