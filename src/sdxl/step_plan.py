"""The stages of a run and the UNet steps each takes, worked out before it runs from the sampler's own schedule.

A run is one or two passes (the first, and the hires fix's second); a pass is the base alone, or the base up to
`refiner_switch_at` and the refiner after it (the ensemble of experts: an absolute timestep cutoff, as diffusers'
`denoising_end`/`denoising_start` and A1111's `apply_refiner`). The counts are the pipelines' own (the same
`img2img_timesteps` and `steps_before_denoising_end` cuts on a copy of the scheduler), so the total a run reports is
right from its first step, and the runner knows when a hires pass starts below the switch (the refiner alone).
"""

from __future__ import annotations

import contextvars
import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sdxl.hires import hires_schedule
from sdxl.params import GenerationParams, refiner_in_passes

# stage names, as `Step.stage` reports them: (base, refiner) of the first pass and of the hires pass
FIRST_PASS = ("base", "refiner")
HIRES_PASS = ("hires", "hires refiner")


def stage_steps(
    scheduler: Any, steps: int, *, strength: float | None = None, start: float | None = None, end: float | None = None
) -> int:
    """The UNet calls one pipeline call makes with `scheduler` and `num_inference_steps=steps`: image-to-image's
    `strength` (or the refiner's `denoising_start=start`) cuts the start of the schedule, `denoising_end=end` its
    end, as the pipelines cut it (a 2nd-order scheduler counts each of its passes)."""
    from sdxl.pipelines.denoise import steps_before_denoising_end
    from sdxl.pipelines.img2img_common import img2img_timesteps

    scheduler = copy.deepcopy(scheduler)  # set_timesteps and set_begin_index change the scheduler's state
    with _quiet_schedulers():  # their warnings about a step count come once, from the run itself
        scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps
    if strength is not None or start is not None:
        timesteps = img2img_timesteps(scheduler, steps, 1.0 if strength is None else strength, start)[0]
    if end is not None:
        timesteps = timesteps[: steps_before_denoising_end(timesteps, end, scheduler.config.num_train_timesteps)]
    return len(timesteps)


def refiner_alone(scheduler: Any, steps: int, strength: float, switch: float) -> bool:
    """Whether an image-to-image pass of `strength` starts at or below the switch point: no base step is left
    before the cutoff, so the refiner runs the whole pass (A1111 switches models at its first step)."""
    return stage_steps(scheduler, steps, strength=strength, end=switch) == 0


def pass_stages(
    scheduler: Any, names: tuple[str, str], steps: int, strength: float | None, switch: float | None
) -> list[tuple[str, int]]:
    """[(stage, steps), ...] of one pass: the base alone (`switch` None), the base then the refiner, or the refiner
    alone (an image-to-image pass that starts below the switch)."""
    if switch is None:
        return [(names[0], stage_steps(scheduler, steps, strength=strength))]
    base = stage_steps(scheduler, steps, strength=strength, end=switch)
    if strength is not None and base == 0:  # `refiner_alone`: no base step before the cutoff
        return [(names[1], stage_steps(scheduler, steps, strength=strength))]
    return [(names[0], base), (names[1], stage_steps(scheduler, steps, start=switch))]


def plan_stages(scheduler: Any, params: GenerationParams, *, text2img: bool) -> list[tuple[str, int]]:
    """[(stage, steps), ...] of the whole run of `params` with the sampler `scheduler` (already set)."""
    first_refiner, hires_refiner = refiner_in_passes(params)
    switch = params.refiner_switch_at
    strength = None if text2img else params.denoising_strength
    stages = pass_stages(scheduler, FIRST_PASS, params.steps, strength, switch if first_refiner else None)
    if params.hires_scale is not None:
        total, hires_strength = hires_schedule(params.hires_steps or params.steps, params.denoising_strength)
        stages += pass_stages(scheduler, HIRES_PASS, total, hires_strength, switch if hires_refiner else None)
    return stages


class _HeldBackWhilePlanning(logging.Filter):
    """Drops the records of a thread that is planning (its context's flag); other threads log as usual."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _PLANNING.get()


_PLANNING: contextvars.ContextVar[bool] = contextvars.ContextVar("sdxl_planning_steps", default=False)
_FILTER = _HeldBackWhilePlanning()


@contextmanager
def _quiet_schedulers() -> Iterator[None]:
    """This thread's log messages from our schedulers held back (warnings such as DPM-Solver singlestep's about odd
    step counts); the loggers' levels stay as they are, so other threads' messages still pass."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("sdxl.schedulers"):
            log = logging.getLogger(name)
            if _FILTER not in log.filters:
                log.addFilter(_FILTER)
    token = _PLANNING.set(True)
    try:
        yield
    finally:
        _PLANNING.reset(token)
