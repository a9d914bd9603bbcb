"""EulerAncestralDiscreteScheduler: ancestral Euler sampling (k-diffusion sample_euler_ancestral), diffusers' API.

Each step goes deterministically down to sigma_down and adds fresh noise of size sigma_up, drawn from the
generator in the model output's dtype exactly as diffusers draws it, so one seed gives the same image.
Parity notes (diffusers 0.42): the step upcasts the sample to float32 and casts the result to the model
output's dtype; the training schedule's timesteps are float64.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.euler import euler_denoised
from sdxl.schedulers.k_family import SigmaSchedulerMixin, input_scales
from sdxl.schedulers.sigmas import TIMESTEP_SPACINGS, interp_sigmas, sigma_to_t, spaced_timesteps, training_sigmas

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False, kw_only=True)
class EulerAncestralDiscreteSchedulerConfig(SchedulerConfig):
    """diffusers' EulerAncestralDiscreteScheduler config keys and defaults."""

    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    choices: ClassVar[dict[str, tuple]] = {
        **SchedulerConfig.choices,
        "prediction_type": ("epsilon", "v_prediction"),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }


def ancestral_sigmas(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step with eta = 1 (k-diffusion get_ancestral_step)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


class EulerAncestralDiscreteScheduler(SigmaSchedulerMixin, Scheduler):
    """Euler ancestral ("Euler a"): stochastic, one model call per step."""

    config_class: ClassVar[type[SchedulerConfig]] = EulerAncestralDiscreteSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        sigmas = training_sigmas(self.alphas_cumprod).flip(0)
        num_train = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, num_train - 1, num_train)[::-1].copy())  # float64
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.is_scale_input_called = False
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        train = training_sigmas(self.alphas_cumprod).numpy()
        if sigmas is not None:  # a schedule type's levels: fractional timesteps, as Euler's custom sigmas
            self.num_inference_steps = len(sigmas) - 1
            sigmas = sigmas.astype(np.float32)
            return torch.from_numpy(sigma_to_t(sigmas[:-1], np.log(train)).astype(np.float32)), torch.from_numpy(sigmas)
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
        ).astype(np.float32)
        sigmas = interp_sigmas(timesteps, train)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        return torch.from_numpy(timesteps), torch.from_numpy(sigmas)

    def _prepare_steps(self) -> None:
        sigmas = self.sigmas.unbind()
        self._sigma = sigmas
        self._input_scale = input_scales(self.sigmas)
        # per-step (sigma_down, sigma_up), element by element as diffusers computes them each step
        self._ancestral = [ancestral_sigmas(a, b) for a, b in itertools.pairwise(sigmas)]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral Euler step: deterministic to sigma_down, then noise * sigma_up from `generator`."""
        self._reject_integer_timestep(timestep)
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step so the model sees correctly scaled input")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma = self._sigma[i]
        sample = sample.to(torch.float32)
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, sigma, sigma)
        sigma_down, sigma_up = self._ancestral[i]
        prev_sample = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
