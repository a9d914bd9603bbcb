"""LMSDiscreteScheduler: linear multistep (k-diffusion sample_lms), diffusers' API.

The step combines up to `order` (default 4) past derivatives with coefficients that integrate the Lagrange basis
polynomials over [sigma_i, sigma_{i+1}]. diffusers integrates with scipy's quad; the integrands are polynomials of
degree < 4, so Gauss-Legendre with 4 nodes is exact (agreement to float rounding, well inside 1e-6).
Parity notes (diffusers 0.42): no fp32 upcast, the step runs in the sample's dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.euler import euler_denoised
from sdxl.schedulers.heun import DiscreteSigmaConfig, discrete_schedule, final_sigma, steps_of
from sdxl.schedulers.k_family import SigmaSchedulerMixin, input_scales

logger = logging.getLogger(__name__)

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


@dataclass(frozen=True, eq=False, kw_only=True)
class LMSDiscreteSchedulerConfig(DiscreteSigmaConfig):
    """diffusers' LMSDiscreteScheduler config keys and defaults."""

    beta_start: float = 0.0001
    beta_end: float = 0.02


def lms_coefficient(sigmas: list[float], order: int, t: int, current_order: int) -> float:
    """Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of node t - current_order (k-diffusion)."""

    def basis(tau: np.ndarray) -> np.ndarray:
        prod = np.ones_like(tau)
        for k in range(order):
            if k != current_order:
                prod *= (tau - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k])
        return prod

    a, b = sigmas[t], sigmas[t + 1]
    tau = 0.5 * (b - a) * _GAUSS_NODES + 0.5 * (b + a)
    return float(0.5 * (b - a) * np.sum(_GAUSS_WEIGHTS * basis(tau)))


class LMSDiscreteScheduler(SigmaSchedulerMixin, Scheduler):
    """Linear multistep ("LMS"): one model call per step, up to 4 past derivatives."""

    config_class: ClassVar[type[SchedulerConfig]] = LMSDiscreteSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        self.timesteps, self.sigmas = self._schedule(self.config.num_train_timesteps, None, None)
        self.is_scale_input_called = False
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = steps_of(num_inference_steps, None, sigmas)
        final = final_sigma(sigmas)
        timesteps, sigmas, _ = discrete_schedule(
            self.config, self.alphas_cumprod, self.num_inference_steps, karras_config_range=False, custom=sigmas
        )
        sigmas = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
        return torch.from_numpy(timesteps).to(torch.float32), sigmas

    def _prepare_steps(self) -> None:
        self._sigma = self.sigmas.unbind()
        self._sigma_list = self.sigmas.tolist()
        self._input_scale = input_scales(self.sigmas)
        self._coefficients: dict[tuple[int, int], list[float]] = {}
        self.derivatives: list[torch.Tensor] = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """diffusers' name for the coefficient of derivative `current_order` steps back at step `t`."""
        return lms_coefficient(self._sigma_list, order, t, current_order)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        order: int = 4,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One linear-multistep step of order min(step + 1, `order`)."""
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"LMSDiscreteScheduler.step: order must be a positive integer, got {order!r}")
        if not self.is_scale_input_called:
            logger.warning("call scale_model_input before step so the model sees correctly scaled input")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma = self._sigma[i]
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, sigma, sigma)
        self.derivatives.append((sample - denoised) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(i + 1, order)
        key = (order, i)
        if key not in self._coefficients:  # pure host math on cached floats: no device sync
            self._coefficients[key] = [self.get_lms_coefficient(order, i, k) for k in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(self._coefficients[key], reversed(self.derivatives)))
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
