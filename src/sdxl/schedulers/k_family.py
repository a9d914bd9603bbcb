"""Pieces shared by diffusers' k-diffusion ports (Euler, Euler-a, LMS, Heun, KDPM2, DPM-SDE): VE sigmas.

The sample lives at x = x0 + sigma * noise, the UNet sees x / sqrt(sigma^2 + 1), and the initial noise has
standard deviation sigma_max (linspace/trailing spacing) or sqrt(sigma_max^2 + 1) (leading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sdxl.schedulers.base import Scheduler


def input_scales(sigmas: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-step 0-dim sqrt(sigma^2 + 1), the divisor of `scale_model_input`."""
    return ((sigmas**2 + 1) ** 0.5).unbind()


def add_sigma_noise(scheduler: Scheduler, original_samples, noise, timesteps) -> torch.Tensor:
    """VE noising x0 + sigma(t) * noise with diffusers' step-index rules (shared by the k-diffusion ports)."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    schedule = scheduler.timesteps.to(original_samples.device)
    indices = scheduler._add_noise_indices(timesteps.to(original_samples.device), schedule)
    sigma = sigmas[indices].flatten()
    sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
    return original_samples + noise * sigma


class SigmaSchedulerMixin:
    """`init_noise_sigma`, `scale_model_input` and `add_noise` of a VE-sigma scheduler.

    Put it before `Scheduler` in the bases. The scheduler fills `self._input_scale` (see `input_scales`) in
    `_prepare_steps`; two-pass schedulers override `scale_model_input` to pick the pass's sigma.
    """

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """sigma_max for linspace/trailing spacing, sqrt(sigma_max^2 + 1) for leading."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1): the UNet sees unit-variance input."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample / self._input_scale[self._step_index]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x0 + sigma * noise at the sigma of each timestep."""
        return add_sigma_noise(self, original_samples, noise, timesteps)

    def _reject_integer_timestep(self, timestep: float | torch.Tensor) -> None:
        # diffusers' Euler schedulers refuse step indices passed as timesteps
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"{type(self).__name__}.step got an integer timestep ({timestep!r}); pass one of scheduler.timesteps, "
                "not an index from enumerate(timesteps)"
            )
