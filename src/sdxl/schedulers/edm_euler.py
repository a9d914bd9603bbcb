"""EDMEulerScheduler: Karras et al. (2022) Algorithm 2 in the EDM parametrisation, with diffusers' API.

The schedule is continuous: sigmas come from a ramp in [0, 1] through the Karras (rho) or exponential formula
between `sigma_min` and `sigma_max`, the model sees c_in(sigma) * x and the timestep c_noise = 0.25 * log(sigma),
and its output is turned into x0 by the EDM preconditioning (c_skip, c_out with `sigma_data`).

Parity notes (diffusers 0.42): the training ramp is float64, the inference ramp float64; both are cast to float32
after the formula. The step upcasts the sample to float32, multiplies the model output by c_out in the output's
dtype, and casts the result back to it. Custom `sigmas` are a *ramp* in [0, 1] fed through the formula, as in
diffusers, not noise levels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerOutput
from sdxl.schedulers.config import ConfigMapping
from sdxl.schedulers.euler import churn
from sdxl.schedulers.k_family import add_sigma_noise
from sdxl.schedulers.sigmas import karras_ramp

logger = logging.getLogger(__name__)

EDM_SIGMA_SCHEDULES = ("karras", "exponential")


@dataclass(frozen=True, eq=False, kw_only=True)
class EDMConfig(ConfigMapping):
    """The keys both EDM schedulers share: the sigma range and schedule, sigma_data (the EDM paper's defaults)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    sigma_schedule: str = "karras"
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    rho: float = 7.0
    final_sigmas_type: str = "zero"

    choices: ClassVar[dict[str, tuple]] = {
        "sigma_schedule": EDM_SIGMA_SCHEDULES,
        # diffusers' EDM preconditioning has c_out for these two only ("sample" fails at its first step)
        "prediction_type": ("epsilon", "v_prediction"),
        "final_sigmas_type": ("zero", "sigma_min"),
    }

    def _check_keys(self) -> None:
        for key in ("sigma_min", "sigma_max", "sigma_data"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(
                    f"{self.scheduler_name} needs {key} > 0, got {value!r} (a config from a scheduler without it, such "
                    f"as SDXL's Euler config, leaves it unset): pass {key}=... to from_config, e.g. "
                    "sigma_min=0.0292, sigma_max=14.6146 for SDXL's training range"
                )


@dataclass(frozen=True, eq=False, kw_only=True)
class EDMEulerSchedulerConfig(EDMConfig):
    """diffusers' EDMEulerScheduler config keys and defaults."""


def edm_sigmas(cfg: ConfigMapping, ramp: torch.Tensor) -> torch.Tensor:
    """Noise levels of a ramp in [0, 1] (0 -> sigma_max): Karras et al. (2022) eq. 5, or log-linear (CosXL)."""
    if cfg.sigma_schedule == "karras":
        return karras_ramp(ramp, cfg.sigma_min, cfg.sigma_max, rho=cfg.rho)
    # log-linear from sigma_max down to sigma_min, as many points as the ramp (its values are not used)
    return torch.linspace(math.log(cfg.sigma_min), math.log(cfg.sigma_max), len(ramp)).exp().flip(0)


def c_noise(sigmas: torch.Tensor) -> torch.Tensor:
    """The EDM timestep conditioning 0.25 * log(sigma) (Karras et al. 2022, Table 1)."""
    return 0.25 * torch.log(sigmas)


def edm_denoised(cfg: ConfigMapping, sample: torch.Tensor, model_output: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = c_skip * x + c_out * F(x): Karras et al. (2022) eq. 7 with Table 1's skip and output scalings."""
    sigma_data = cfg.sigma_data
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    if cfg.prediction_type == "v_prediction":
        c_out = -sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip * sample + c_out * model_output


class EDMSchedulerMixin:
    """What both EDM schedulers share: no betas, c_in input scaling, VE noising, and sqrt(sigma_max^2 + 1)."""

    _compatibles: ClassVar[list[str]] = []  # diffusers lists none: an EDM config has no betas to share

    def _init_betas(self) -> None:
        pass

    @property
    def init_noise_sigma(self) -> float:
        """sqrt(sigma_max^2 + 1), a Python float as in diffusers."""
        return (self.config.sigma_max**2 + 1) ** 0.5

    def _prepare_steps(self) -> None:
        self._sigma = self.sigmas.unbind()
        self._sigma_float = self.sigmas.tolist()
        # c_in = 1 / sqrt(sigma^2 + sigma_data^2), per step as 0-dim float32 tensors
        self._c_in = [1 / ((s**2 + self.config.sigma_data**2) ** 0.5) for s in self._sigma]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """c_in * x: the EDM input scaling."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample * self._c_in[self._step_index]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x0 + sigma * noise at the sigma of each timestep."""
        return add_sigma_noise(self, original_samples, noise, timesteps)


class EDMEulerScheduler(EDMSchedulerMixin, Scheduler):
    """Euler steps (optional churn) on the EDM sigma schedule."""

    config_class: ClassVar[type[ConfigMapping]] = EDMEulerSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    min_custom_sigmas: ClassVar[int] = 1
    custom_sigmas_meaning: ClassVar[str] = "a ramp in [0, 1] that the sigma schedule maps to noise levels"

    def _init_schedule(self) -> None:
        n = self.config.num_train_timesteps
        ramp = torch.arange(n + 1, dtype=torch.float64) / n
        sigmas = edm_sigmas(self.config, ramp).to(torch.float32)
        self.timesteps = c_noise(sigmas)
        self.sigmas = torch.cat([sigmas, self._final_sigma(sigmas)])
        self.is_scale_input_called = False
        self._prepare_steps()

    def _final_sigma(self, sigmas: torch.Tensor) -> torch.Tensor:
        return sigmas[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1)

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = num_inference_steps  # None for custom sigmas, as in diffusers
        if sigmas is None:
            ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        else:
            ramp = torch.from_numpy(np.asarray(sigmas, dtype=np.float64))
        sigmas = edm_sigmas(self.config, ramp).to(torch.float32)
        return c_noise(sigmas), torch.cat([sigmas, self._final_sigma(sigmas)])

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
        pred_original_sample: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from sigma_i to sigma_{i+1}; with `s_churn > 0` noise is added first (Algorithm 2)."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"EDMEulerScheduler.step got an integer timestep ({timestep!r}); pass one of scheduler.timesteps, "
                "not an index from enumerate(timesteps)"
            )
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step so the model sees correctly scaled input")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sample = sample.to(torch.float32)
        sample, sigma_hat = churn(self, i, sample, model_output, generator, s_churn, s_tmin, s_tmax, s_noise)
        if pred_original_sample is None:
            pred_original_sample = edm_denoised(self.config, sample, model_output, sigma_hat)
        derivative = (sample - pred_original_sample) / sigma_hat
        prev_sample = (sample + derivative * (self._sigma[i + 1] - sigma_hat)).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, pred_original_sample, return_dict)
