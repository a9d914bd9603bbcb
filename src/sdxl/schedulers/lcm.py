"""LCMScheduler: the multistep sampler of Latent Consistency Models (Luo et al. 2023, arXiv:2310.04378, Algorithm 1).

Each step maps the sample to the consistency function's clean estimate
`denoised = c_out(t) * x0(t) + c_skip(t) * x_t` (the boundary-condition scalings with sigma_data = 0.5 and the
timestep scaled by `timestep_scaling`) and, except on the last step, re-noises it to the next timestep with fresh
noise. The schedule is a subset of the `original_inference_steps`-step "skipping" schedule the model was distilled
on (timesteps k*i - 1, k = num_train_timesteps // original_inference_steps). Used with LCM-distilled UNets and
LCM-LoRAs (2-8 steps, guidance 1-2).

Parity notes (diffusers 0.42): timesteps are int64; the boundary scalings are computed from the timestep as passed
to `step` (a tensor's device and dtype, or Python floats for an int), alpha_bar scalars are 0-dim float32 as in the DDIM family (no 2**-24 clamp
with zero terminal SNR); the noise is drawn in the denoised sample's dtype; the "last step" that draws no noise is
index `num_inference_steps - 1`, where `num_inference_steps` counts custom timesteps before the `strength` cut;
`timestep_spacing` and `steps_offset` are accepted and unused.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.ddim import bound_x0, predict_x0, reset_vp_schedule, vp_add_noise, vp_get_velocity

logger = logging.getLogger(__name__)

SIGMA_DATA = 0.5  # the consistency-model boundary condition's data std (fixed in LCM)


@dataclass(frozen=True, eq=False, kw_only=True)
class LCMSchedulerConfig(SchedulerConfig):
    """diffusers' LCMScheduler config keys and defaults."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0
    rescale_betas_zero_snr: bool = False

    sigma_schedule_keys: ClassVar[dict[str, str]] = {}  # no sigma schedules (use_karras_sigmas etc. are ignored)

    def validate(self) -> None:
        if not isinstance(self.original_inference_steps, int) or self.original_inference_steps < 1:
            raise ValueError(
                f"original_inference_steps must be a positive integer, got {self.original_inference_steps!r}"
            )


@dataclass
class LCMSchedulerOutput(SchedulerOutput):
    """`step`'s result: the next sample and `denoised`, the consistency function's clean estimate at this step."""

    denoised: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(v for v in (self.prev_sample, self.denoised) if v is not None)


def boundary_scalings(timestep: int | torch.Tensor, timestep_scaling: float) -> tuple[Any, Any]:
    """(c_skip, c_out) of the consistency boundary condition at `timestep`, computed from the timestep as given (a
    Python int: floats; a tensor: 0-dim float32 tensors on its device, no host sync), as diffusers computes them."""
    scaled = timestep * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


class LCMScheduler(Scheduler):
    """Latent Consistency Model multistep sampling: one consistency estimate per step, re-noised in between."""

    config_class: ClassVar[type[SchedulerConfig]] = LCMSchedulerConfig
    order: ClassVar[int] = 1
    _compatibles: ClassVar[list[str]] = []  # diffusers lists none for LCM
    supports_custom_timesteps: ClassVar[bool] = True
    supports_custom_sigmas: ClassVar[bool] = False
    sigma_data: ClassVar[float] = SIGMA_DATA

    def _init_schedule(self) -> None:
        cfg = self.config
        reset_vp_schedule(self, cfg.rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = torch.from_numpy(np.arange(0, cfg.num_train_timesteps)[::-1].copy().astype(np.int64))
        self.sigmas = torch.empty(0)
        self.custom_timesteps = False
        self._original_steps: int | None = None
        self._strength = 1.0
        self._scalars: list[tuple[torch.Tensor, ...]] = []

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """Pick `num_inference_steps` timesteps from the distillation schedule of `original_inference_steps`
        (default: the config's), or use custom descending `timesteps`; `strength` < 1 shortens the distillation
        schedule (or cuts the custom one) as img2img does."""
        self._original_steps = original_inference_steps
        self._strength = strength
        super().set_timesteps(num_inference_steps, device, timesteps=timesteps)

    def _distillation_timesteps(self) -> tuple[np.ndarray, int]:
        cfg = self.config
        original_steps = self._original_steps or cfg.original_inference_steps
        if original_steps > cfg.num_train_timesteps:
            raise ValueError(
                f"original_inference_steps={original_steps} cannot be larger than num_train_timesteps="
                f"{cfg.num_train_timesteps}: the model was trained on that many timesteps"
            )
        k = cfg.num_train_timesteps // original_steps
        origin = np.arange(1, int(original_steps * self._strength) + 1) * k - 1
        return origin, original_steps

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        origin, original_steps = self._distillation_timesteps()
        if timesteps is not None:
            self._check_custom_timesteps(timesteps, set(origin.tolist()), original_steps)
            steps = np.asarray(timesteps, dtype=np.int64)
            self.num_inference_steps = len(steps)
            self.custom_timesteps = True
            kept = min(int(len(steps) * self._strength), len(steps))
            steps = steps[max(len(steps) - kept, 0) :]
        else:
            if num_inference_steps > cfg.num_train_timesteps:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} cannot be larger than num_train_timesteps="
                    f"{cfg.num_train_timesteps}"
                )
            if len(origin) // num_inference_steps < 1:
                raise ValueError(
                    f"original_inference_steps x strength = {original_steps} x {self._strength} gives fewer "
                    f"timesteps than num_inference_steps={num_inference_steps}: lower num_inference_steps to at most "
                    f"{int(original_steps * self._strength)} or raise strength above "
                    f"{num_inference_steps / original_steps}"
                )
            if num_inference_steps > original_steps:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} cannot be larger than original_inference_steps="
                    f"{original_steps}: LCM samples a subset of the distillation schedule"
                )
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            origin = origin[::-1].copy()
            picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            steps = origin[picks]
        self._host_timesteps = steps.tolist()
        return torch.from_numpy(steps.astype(np.int64)), torch.empty(0)

    def _check_custom_timesteps(self, timesteps: np.ndarray, train_timesteps: set[int], original_steps: int) -> None:
        """diffusers' errors for custom LCM timesteps (not descending, past training) and its warnings."""
        cfg = self.config
        values = [int(t) for t in timesteps]
        if any(b >= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"LCMScheduler: custom timesteps must be in descending order, got {values}")
        if values[0] >= cfg.num_train_timesteps:
            raise ValueError(
                f"LCMScheduler: custom timesteps must start below num_train_timesteps={cfg.num_train_timesteps}, "
                f"got {values[0]}"
            )
        if self._strength == 1.0 and values[0] != cfg.num_train_timesteps - 1:
            logger.warning(
                "The first custom timestep is %d, not num_train_timesteps - 1 = %d: the images may come out wrong.",
                values[0],
                cfg.num_train_timesteps - 1,
            )
        off_schedule = [t for t in values[1:] if t not in train_timesteps]
        if off_schedule:
            logger.warning(
                "Custom timesteps off the distillation schedule (the images may come out wrong): %s", off_schedule
            )
        if len(values) > original_steps:
            logger.warning(
                "%d custom timesteps exceed the %d of the distillation schedule: the images may come out wrong.",
                len(values),
                original_steps,
            )

    def _prepare_steps(self) -> None:
        # per step: (alpha_bar_t, alpha_bar_next); the last step's "next" is itself (diffusers)
        self._scalars = []
        for i, t in enumerate(self._host_timesteps):
            nxt = self._host_timesteps[i + 1] if i + 1 < len(self._host_timesteps) else t
            alpha_next = self.alphas_cumprod[nxt] if nxt >= 0 else self.final_alpha_cumprod
            self._scalars.append((self.alphas_cumprod[t], alpha_next))

    def get_scalings_for_boundary_condition_discrete(self, timestep: int | torch.Tensor) -> tuple[Any, Any]:
        """(c_skip, c_out) at `timestep` (diffusers' name; `sigma_data` = 0.5)."""
        return boundary_scalings(timestep, self.config.timestep_scaling)

    def _index_for_missing_timestep(self, timestep):
        raise ValueError(
            f"timestep {timestep} is not in LCMScheduler.timesteps; step through scheduler.timesteps after set_timesteps"
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One LCM step: the consistency estimate `denoised`, re-noised to the next timestep unless it is the last."""
        cfg = self.config
        self._start_step(timestep)
        alpha_t, alpha_next = self._scalars[self._step_index]
        c_skip, c_out = boundary_scalings(timestep, cfg.timestep_scaling)
        x0 = bound_x0(cfg, predict_x0(cfg.prediction_type, model_output, sample, alpha_t, 1 - alpha_t))
        denoised = c_out * x0 + c_skip * sample
        if self._step_index != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, denoised.dtype)
            prev_sample = alpha_next.sqrt() * denoised + (1 - alpha_next).sqrt() * noise
        else:
            prev_sample = denoised
        self._step_index += 1
        out = LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)
        return out if return_dict else out.to_tuple()

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The timestep after `timestep` in the schedule (-1 after the last)."""
        if not (self.custom_timesteps or self.num_inference_steps):
            return torch.as_tensor(timestep) - 1
        index = int((self.timesteps == timestep).nonzero(as_tuple=True)[0][0])
        return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise at each timestep's value (alpha_bar in the sample dtype)."""
        return vp_add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target at `timesteps`."""
        return vp_get_velocity(self.alphas_cumprod, sample, noise, timesteps)
