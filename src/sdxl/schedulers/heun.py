"""HeunDiscreteScheduler: Karras et al. (2022) Algorithm 1 (Heun's 2nd-order method), diffusers' API.

Also home of the schedule shared by diffusers' k-diffusion ports (Heun, KDPM2, LMS, DPM-SDE): spaced timesteps,
sigmas interpolated from the training schedule, optionally resampled (karras/exponential/beta) in the spacing's
range. Second-order schedulers repeat every inner timestep: `timesteps` has 2N - 1 entries for N steps, and the
pipeline's loop calls `step` once per entry (first pass: Euler predictor; second pass: trapezoidal corrector).

Parity notes (diffusers 0.42): no fp32 upcast, the step runs in the sample's dtype with 0-dim float32 sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.euler import euler_denoised
from sdxl.schedulers.k_family import (
    SigmaSchedulerMixin,
    add_sigma_noise,  # noqa: F401  (re-exported from its former home)
    input_scales,
)
from sdxl.schedulers.sigmas import (
    TIMESTEP_SPACINGS,
    interp_sigmas,
    resample_sigmas,
    sigma_to_t,
    spaced_timesteps,
    training_sigmas,
)


@dataclass(frozen=True, eq=False, kw_only=True)
class DiscreteSigmaConfig(SchedulerConfig):
    """Keys shared by diffusers' k-diffusion ports: their default betas, sigma schedules and timestep spacing."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    timestep_spacing: str = "linspace"
    steps_offset: int = 0

    choices: ClassVar[dict[str, tuple]] = {**SchedulerConfig.choices, "timestep_spacing": TIMESTEP_SPACINGS}


def discrete_schedule(
    cfg: SchedulerConfig,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    timesteps: np.ndarray | None = None,
    *,
    float32_timesteps: bool = True,
    karras_config_range: bool = True,
    custom: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timesteps, sigmas without the final zero, log training sigmas) of diffusers' k-diffusion ports (float64 sigmas).

    Spaced timesteps are float32 (float64 in DPM-SDE); resampled schedules span the interpolated sigmas' range
    (or `sigma_min`/`sigma_max` from the config; LMS and DPM-SDE ignore them for karras) and take fractional
    timesteps, as do `custom` levels (a schedule type's, final level last).
    """
    train = training_sigmas(alphas_cumprod).numpy()  # float32, ascending in t
    log_sigmas = np.log(train)
    if custom is not None:  # a schedule type's levels (the final one is the caller's): the resampled path
        sigmas = np.asarray(custom[:-1], dtype=np.float64)
        return sigma_to_t(sigmas, log_sigmas), sigmas, log_sigmas
    if timesteps is None:
        timesteps = spaced_timesteps(cfg.timestep_spacing, num_steps, cfg.num_train_timesteps, cfg.steps_offset)
    timesteps = timesteps.astype(np.float32 if float32_timesteps else np.float64)
    sigmas = interp_sigmas(timesteps, train)
    kind = cfg.sigma_schedule
    if kind is not None:
        use_config = karras_config_range or kind != "karras"
        sigma_min = cfg.get("sigma_min") if use_config else None
        sigma_max = cfg.get("sigma_max") if use_config else None
        sigma_min = float(sigmas[-1]) if sigma_min is None else sigma_min
        sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
        sigmas = resample_sigmas(kind, sigma_min, sigma_max, num_steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    return timesteps, sigmas, log_sigmas


def steps_of(num_inference_steps: int | None, timesteps: np.ndarray | None, sigmas: np.ndarray | None) -> int:
    """The step count of a schedule given by a count, custom timesteps, or custom levels (final level last)."""
    if num_inference_steps is not None:
        return num_inference_steps
    return len(timesteps) if timesteps is not None else len(sigmas) - 1


def final_sigma(custom: np.ndarray | None) -> float:
    """The level a run ends at: 0, or the last of custom levels."""
    return 0.0 if custom is None else float(custom[-1])


def repeat_inner(values: torch.Tensor, tail: int = 1) -> torch.Tensor:
    """[v0, v1, v1, ..., v_{n-1-tail}, v_{n-1-tail}, v_last...]: every value but the first and the last `tail` twice."""
    return torch.cat([values[:1], values[1 : len(values) - tail].repeat_interleave(2), values[len(values) - tail :]])


@dataclass(frozen=True, eq=False, kw_only=True)
class HeunDiscreteSchedulerConfig(DiscreteSigmaConfig):
    """diffusers' HeunDiscreteScheduler config keys and defaults."""

    clip_sample: bool = False
    clip_sample_range: float = 1.0


class HeunDiscreteScheduler(SigmaSchedulerMixin, Scheduler):
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn): two model calls per step."""

    config_class: ClassVar[type[SchedulerConfig]] = HeunDiscreteSchedulerConfig
    order: ClassVar[int] = 2
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        # diffusers builds the training schedule with set_timesteps(num_train_timesteps)
        self.timesteps, self.sigmas = self._schedule(self.config.num_train_timesteps, None, None)
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = steps_of(num_inference_steps, timesteps, sigmas)
        final = final_sigma(sigmas)
        timesteps, sigmas, _ = discrete_schedule(
            self.config, self.alphas_cumprod, self.num_inference_steps, timesteps, custom=sigmas
        )
        sigmas = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
        timesteps = torch.from_numpy(timesteps)
        return repeat_inner(timesteps, tail=0).to(torch.float32), repeat_inner(sigmas)

    def _prepare_steps(self) -> None:
        self._sigma = self.sigmas.unbind()
        self._input_scale = input_scales(self.sigmas)
        self.prev_derivative = self.dt = self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True on the predictor pass, False on the corrector pass."""
        return self.dt is None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) at this pass's sigma."""
        if self._step_index is None:
            self._init_step_index(timestep)
        return sample / self._input_scale[self._step_index]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One pass: the Euler predictor (first call of a step) or the trapezoidal corrector (second call)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        first = self.state_in_first_order
        sigma, sigma_next = (self._sigma[i], self._sigma[i + 1]) if first else (self._sigma[i - 1], self._sigma[i])
        sigma_input = sigma if first else sigma_next
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, sigma_input, sigma_input)
        if self.config.clip_sample:
            denoised = denoised.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative = (sample - denoised) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            derivative = (self.prev_derivative + (sample - denoised) / sigma_next) / 2
            dt, sample = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None
        prev_sample = sample + derivative * dt
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
