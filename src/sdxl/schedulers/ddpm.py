"""DDPMScheduler: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", ancestral sampling (eqs. 6-7).

Parity notes (diffusers 0.42): the previous timestep is the next one in the schedule (t - 1 before
set_timesteps); noise is drawn at every step with t > 0, in the model output's dtype; the arithmetic runs in the
sample's dtype with 0-dim float32 alpha_bar scalars; no 2**-24 clamp with zero terminal SNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.ddim import (
    bound_x0,
    discrete_timesteps,
    predict_x0,
    reset_vp_schedule,
    vp_add_noise,
    vp_get_velocity,
)
from sdxl.schedulers.sigmas import TIMESTEP_SPACINGS

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


@dataclass(frozen=True, eq=False, kw_only=True)
class DDPMSchedulerConfig(SchedulerConfig):
    """diffusers' DDPMScheduler config keys and defaults (the sigmoid and laplace beta schedules unsupported)."""

    variance_type: str = "fixed_small"
    clip_sample: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    choices: ClassVar[dict[str, tuple]] = {
        **SchedulerConfig.choices,
        "variance_type": VARIANCE_TYPES,
        "timestep_spacing": TIMESTEP_SPACINGS,
    }
    sigma_schedule_keys: ClassVar[dict[str, str]] = {}  # no sigma schedules (use_karras_sigmas etc. are ignored)


def posterior_variance(variance_type: str, alpha_prod_t, alpha_prod_t_prev, predicted_variance=None):
    """The variance term of q(x_{t-1} | x_t, x0) (Ho et al. eq. 7) in the form `variance_type` asks for."""
    current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    if variance_type == "fixed_small":
        return variance
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(variance))
    if variance_type == "fixed_large":
        return current_beta_t
    if variance_type == "fixed_large_log":
        return torch.log(current_beta_t)
    if variance_type == "learned":
        return predicted_variance
    frac = (predicted_variance + 1) / 2  # learned_range: interpolate the log-variance (Nichol & Dhariwal 2021)
    return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)


class DDPMScheduler(Scheduler):
    """Ancestral DDPM sampling over the (possibly spaced) training schedule."""

    config_class: ClassVar[type[SchedulerConfig]] = DDPMSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        reset_vp_schedule(self, self.config.rescale_betas_zero_snr)
        self.one = torch.tensor(1.0)
        self.custom_timesteps = False
        self.variance_type = self.config.variance_type
        steps = np.arange(0, self.config.num_train_timesteps)[::-1].copy()
        self.timesteps = torch.from_numpy(steps)
        self.sigmas = torch.empty(0)
        self._host_timesteps = steps.tolist()
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        if timesteps is not None:
            if np.any(np.diff(timesteps) >= 0):
                raise ValueError(f"custom timesteps must be strictly descending, got {timesteps.tolist()}")
            if timesteps[0] >= cfg.num_train_timesteps:
                raise ValueError(
                    f"custom timesteps must start below num_train_timesteps={cfg.num_train_timesteps}, "
                    f"got {timesteps[0]}"
                )
            steps = timesteps.astype(np.int64)
        else:
            steps = discrete_timesteps(
                cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
            )
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(steps)
        self._host_timesteps = steps.tolist()
        return torch.from_numpy(steps.copy()), torch.empty(0)

    def _prepare_steps(self) -> None:
        # per step: (alpha_bar_t, alpha_bar_prev, t > 0) with prev = the next timestep of the schedule
        ts = self._host_timesteps
        self._steps = []
        for i, t in enumerate(ts):
            prev_alpha = self.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) and ts[i + 1] >= 0 else self.one
            self._steps.append((self.alphas_cumprod[t], prev_alpha, t > 0))

    def _index_for_missing_timestep(self, timestep):
        raise ValueError(f"timestep {timestep} is not in DDPMScheduler.timesteps; step through scheduler.timesteps")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step: the posterior mean of x_{t-1} given the predicted x0, plus noise while t > 0."""
        cfg = self.config
        if self._step_index is None:
            self._init_step_index(timestep)
        alpha_prod_t, alpha_prod_t_prev, noisy = self._steps[self._step_index]
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 1. predicted x0 (eq. 15)
        x0 = bound_x0(cfg, predict_x0(cfg.prediction_type, model_output, sample, alpha_prod_t, beta_prod_t))

        # 2. posterior mean (eq. 7)
        x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = x0_coeff * x0 + sample_coeff * sample

        # 3. noise
        if noisy:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            variance = posterior_variance(self.variance_type, alpha_prod_t, alpha_prod_t_prev, predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + (variance**0.5) * noise
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after `timestep` in the schedule (-1 after the last), as diffusers' DDPMScheduler."""
        i = self.index_for_timestep(timestep)
        return torch.tensor(-1) if i == len(self.timesteps) - 1 else self.timesteps[i + 1]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise at each timestep's value (alpha_bar in the sample dtype)."""
        return vp_add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target at `timesteps`."""
        return vp_get_velocity(self.alphas_cumprod, sample, noise, timesteps)
