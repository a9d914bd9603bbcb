"""A generation outside the models: its modes, the checks a `GenerationParams` must pass before any model loads,
its seeds, the step reports a caller sees (and can stop or cancel with), and its results.

`sdxl.runner.Runner` runs generations; the command, the server's worker and cross-request batching share these."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdxl.hires import check_sampling_params, hires_schedule
from sdxl.params import GenerationParams

if TYPE_CHECKING:
    import torch
    from PIL import Image

TEXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"

SEED_RANGE = 2**32
_SEEDS = random.Random()  # its own state: drawing a random seed leaves the global `random` module untouched


class Cancelled(Exception):
    """Raised by a step callback to abandon a run: nothing is decoded and no image is returned."""


@dataclass
class Step:
    """One finished denoising step, as the step callback sees it.

    `step` counts UNet steps done in the whole run (every stage), `total` the steps the run will take; `latents` are
    the current (B, C, h, w) latents of the stage `stage` ("base", "refiner", or the hires fix's second pass:
    "hires", and "hires refiner" after its switch point), whose pipeline is `pipe` (its VAE decodes them);
    `denoised` is the step's estimate of the finished latents (what a preview should show; the latents themselves
    where the scheduler gives no estimate).
    """

    step: int
    total: int
    stage: str
    latents: torch.Tensor
    pipe: Any
    denoised: torch.Tensor | None = None


# What a step callback returns: None to go on, "stop" to end denoising here and decode what there is (A1111's
# interrupt and skip); raising `Cancelled` abandons the run.
StepCallback = Callable[[Step], "str | None"]


@dataclass
class GeneratedImage:
    """One image of a run, with the exact parameters that made it (its own seed, size and sampler)."""

    image: Image.Image
    params: GenerationParams


def mode_of(image: Any, mask: Any) -> str:
    """txt2img without an input image, img2img with one, inpaint with an image and a mask."""
    if mask is not None and image is None:
        raise ValueError("a mask needs an input image to inpaint; pass the image too")
    return TEXT2IMG if image is None else INPAINT if mask is not None else IMG2IMG


def resolve_seed(seed: int | None) -> int:
    """A seed of None or -1 means a random one (as A1111); the value used is what the metadata records."""
    if seed is None or seed == -1:
        return _SEEDS.randrange(SEED_RANGE)
    if seed < 0:
        raise ValueError(f"seed must be -1 (random) or a non-negative integer, got {seed}")
    return int(seed)


class GenerationFailed(RuntimeError):
    """The run finished but its images are not usable (NaN or all-black decodes)."""


def check_images(images: list[Image.Image]) -> None:
    """An all-black image is what a NaN decode turns into (the pipelines already retried the VAE in float32):
    never hand it back as a result."""
    import numpy as np

    for i, image in enumerate(images):
        if not np.asarray(image).any():
            raise GenerationFailed(
                f"image {i} decoded to all black (NaN or overflow in the VAE, even in float32); try another seed, "
                "a lower guidance scale, or float32/bfloat16 instead of float16"
            )


def check_params(params: GenerationParams, mode: str) -> None:
    """The mistakes a `GenerationParams` can show before any model is loaded (ValueError naming the field)."""
    if params.steps < 1:
        raise ValueError(f"steps must be at least 1 (got {params.steps})")
    if params.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {params.batch_size})")
    for name in ("width", "height"):
        value = getattr(params, name)
        if value is not None and (value <= 0 or value % 8):
            raise ValueError(f"{name} must be a positive multiple of 8 (got {value}); try {max(8, value // 8 * 8)}")
    if mode != TEXT2IMG:
        strength = params.denoising_strength
        if strength is None:
            raise ValueError("image-to-image and inpainting need denoising_strength, in [0, 1]")
        if not 0 <= strength <= 1:
            raise ValueError(f"denoising_strength must be between 0 and 1 (got {strength})")
    if params.refiner and not (params.refiner_switch_at is not None and 0 < params.refiner_switch_at < 1):
        raise ValueError(f"refiner_switch_at must lie strictly between 0 and 1 (got {params.refiner_switch_at})")
    if params.mask_blur is not None and params.mask_blur < 0:
        raise ValueError(f"mask_blur must be 0 or more pixels (got {params.mask_blur})")
    if params.padding_mask_crop is not None and params.padding_mask_crop < 0:
        raise ValueError(f"padding_mask_crop must be 0 or more pixels (got {params.padding_mask_crop})")
    check_sampling_params(params, text2img=mode == TEXT2IMG)
    if params.sampler and params.sampler.strip().lower() == "lcm":
        check_lcm_steps(params)
    if params.refiner and params.padding_mask_crop is not None:
        raise ValueError("padding_mask_crop cannot be combined with a refiner (the base would hand over the latents "
                         "of the crop only); drop one of them")


def check_lcm_steps(params: GenerationParams) -> None:
    """LCM picks its steps from the schedule LCM models are distilled on (50 steps unless a model's scheduler config
    says otherwise): more steps than that cannot be taken."""
    from sdxl.schedulers.lcm import LCMSchedulerConfig

    limit = LCMSchedulerConfig.original_inference_steps
    for name in ("steps", "hires_steps"):
        if getattr(params, name) > limit:
            raise ValueError(f"{name} must be at most {limit} with the LCM sampler (got {getattr(params, name)}); "
                             "LCM models and LCM-LoRAs are made for 2-8 steps")
    if params.hires_scale is not None:
        # the hires pass runs its steps as the tail of a longer schedule (hires_schedule), which must fit too
        total, _ = hires_schedule(params.hires_steps or params.steps, params.denoising_strength)
        if total > limit:
            raise ValueError(f"hires_steps / denoising strength gives the hires pass a schedule of {total}, over the "
                             f"LCM sampler's {limit}: lower hires_steps or raise the hires denoising strength")


class Progress:
    """Counts steps across a run's stages and forwards them to the caller's step callback.

    `plan` lists the run's stages in order with the steps each should take (`sdxl.step_plan.plan_stages`): when a
    stage starts, the total is the steps done so far, that stage's own count and the planned counts of the stages
    after it, so every step reports the run's real total (a stage that never starts is simply not counted).
    """

    def __init__(self, on_step: StepCallback | None, plan: list[tuple[str, int]] | tuple = ()):
        self.on_step = on_step
        self.plan = list(plan)
        self.done = 0  # steps finished by earlier stages
        self.total = 0
        self.stopped = False

    def after(self, stage: str) -> int:
        """The planned steps of the stages after `stage` (0 for a stage the plan does not know)."""
        names = [name for name, _ in self.plan]
        if stage not in names:
            return 0
        return sum(steps for _, steps in self.plan[names.index(stage) + 1 :])

    def callback(self, stage: str) -> Callable[..., dict] | None:
        """A diffusers-style step-end callback object for one stage (None without a step callback)."""
        if self.on_step is None:
            return None
        offset = None

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
            nonlocal offset
            if offset is None:  # the stage's step count is known once its schedule is set
                offset = self.done
                self.total = offset + pipe.num_timesteps + self.after(stage)
            self.done = offset + i + 1
            action = self.on_step(Step(self.done, max(self.total, self.done), stage, tensors["latents"], pipe,
                                       tensors.get("denoised")))
            if action == "stop":
                pipe._interrupt = True
                self.stopped = True
            return {}

        on_step_end.tensor_inputs = ("latents", "denoised")  # read by the pipelines, as diffusers' callback objects
        return on_step_end
