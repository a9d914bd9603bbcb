"""EulerDiscreteScheduler: Karras et al. (2022) Algorithm 2 (Euler steps with optional churn), diffusers' API.

Parity notes (diffusers 0.42): the sigma schedule follows the timestep spacing (karras/exponential/beta span
the *interpolated* range, with fractional timesteps); `step` upcasts the sample to float32 but multiplies the
model output by sigma in the model output's dtype, and casts the result back to that dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.k_family import SigmaSchedulerMixin, input_scales
from sdxl.schedulers.sigmas import (
    TIMESTEP_SPACINGS,
    interp_sigmas,
    log_linear_sigmas,
    resample_sigmas,
    sigma_to_t,
    spaced_timesteps,
    training_sigmas,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False, kw_only=True)
class EulerDiscreteSchedulerConfig(SchedulerConfig):
    """diffusers' EulerDiscreteScheduler config keys and defaults."""

    interpolation_type: str = "linear"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    choices: ClassVar[dict[str, tuple]] = {
        **SchedulerConfig.choices,
        "prediction_type": ("epsilon", "v_prediction", "sample", "original_sample"),
        "interpolation_type": ("linear", "log_linear"),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "timestep_type": ("discrete", "continuous"),
        "final_sigmas_type": ("zero", "sigma_min"),
    }

    @property
    def continuous_v(self) -> bool:
        """EDM-style timesteps 0.25 * log(sigma), which diffusers uses only for v-prediction."""
        return self.timestep_type == "continuous" and self.prediction_type == "v_prediction"


def euler_denoised(
    prediction_type: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
) -> torch.Tensor:
    """x0 from the model output at noise level sigma_hat (v-prediction uses the un-churned sigma, as diffusers)."""
    if prediction_type in ("sample", "original_sample"):
        return model_output
    if prediction_type == "epsilon":
        return sample - sigma_hat * model_output
    # v-prediction: c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1)
    return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))


def _per_element(fn, values: torch.Tensor) -> torch.Tensor:
    """Apply a scalar function element by element on 0-dim tensors (the rounding of diffusers' per-step math)."""
    return torch.stack([fn(v) for v in values.unbind()]) if len(values) else values.clone()


def churn(
    scheduler: Scheduler,
    i: int,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample, sigma_hat): Karras et al. (2022) Algorithm 2, lines 5-6: raise sigma_i to sigma_hat = (1 + gamma)
    sigma_i by adding fresh noise, where sigma_i lies in [s_tmin, s_tmax]; gamma is 0 (no noise) without churn."""
    sigma = scheduler._sigma[i]
    # diffusers compares the float32 sigma tensor with the thresholds, i.e. in float32
    inside = float(np.float32(s_tmin)) <= scheduler._sigma_float[i] <= float(np.float32(s_tmax))
    gamma = min(s_churn / (len(scheduler._sigma) - 1), 2**0.5 - 1) if inside else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return sample, sigma_hat


class EulerDiscreteScheduler(SigmaSchedulerMixin, Scheduler):
    """Euler sampler over a discrete VP schedule (diffusers' default for SDXL)."""

    config_class: ClassVar[type[SchedulerConfig]] = EulerDiscreteSchedulerConfig
    order: ClassVar[int] = 1
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        sigmas = training_sigmas(self.alphas_cumprod).flip(0)
        timesteps = np.linspace(0, self.config.num_train_timesteps - 1, self.config.num_train_timesteps)[::-1]
        if self.config.continuous_v:
            self.timesteps = _per_element(lambda s: 0.25 * s.log(), sigmas)
        else:
            self.timesteps = torch.from_numpy(timesteps.copy()).to(torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.is_scale_input_called = False
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        if timesteps is not None and cfg.continuous_v:
            raise ValueError("custom timesteps cannot be used with timestep_type='continuous' and v_prediction")
        self.num_inference_steps = num_inference_steps or (
            len(timesteps) if timesteps is not None else len(sigmas) - 1
        )
        train = training_sigmas(self.alphas_cumprod).numpy()  # float32, ascending in t
        log_sigmas = np.log(train)
        if sigmas is not None:
            sigmas = sigmas.astype(np.float32)
            timesteps = sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                timesteps = timesteps.astype(np.float32)
            else:
                timesteps = spaced_timesteps(
                    cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
                ).astype(np.float32)
            if cfg.interpolation_type == "linear":
                sigmas = interp_sigmas(timesteps, train)
            else:
                sigmas = log_linear_sigmas(train, self.num_inference_steps + 1)
            if cfg.sigma_schedule is not None:
                sigma_min = cfg.sigma_min if cfg.sigma_min is not None else float(sigmas[-1])
                sigma_max = cfg.sigma_max if cfg.sigma_max is not None else float(sigmas[0])
                sigmas = resample_sigmas(cfg.sigma_schedule, sigma_min, sigma_max, self.num_inference_steps)
                timesteps = sigma_to_t(sigmas, log_sigmas)
            sigma_last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
            sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        sigmas = torch.from_numpy(sigmas).to(torch.float32)
        if cfg.continuous_v:
            return _per_element(lambda s: 0.25 * s.log(), sigmas[:-1]), sigmas
        return torch.from_numpy(timesteps.astype(np.float32)), sigmas

    def _prepare_steps(self) -> None:
        # 0-dim CPU tensors mix with device tensors without a sync and round exactly as diffusers' per-step math
        self._sigma = self.sigmas.unbind()
        self._sigma_float = self.sigmas.tolist()
        self._input_scale = input_scales(self.sigmas)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step; with `s_churn > 0` noise is added first (Karras et al. 2022, Algorithm 2)."""
        self._reject_integer_timestep(timestep)
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step so the model sees correctly scaled input")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sample = sample.to(torch.float32)
        sigma = self._sigma[i]
        sample, sigma_hat = churn(self, i, sample, model_output, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, sigma, sigma_hat)
        derivative = (sample - denoised) / sigma_hat
        prev_sample = (sample + derivative * (self._sigma[i + 1] - sigma_hat)).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
