"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler: k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral.

DPM-Solver-2 (Lu et al. 2022, Algorithm 1 with r = 1/2 in log sigma) as a second-order scheduler: the first pass
of a step steps to the geometric midpoint sigma, the second evaluates the model there and takes the full step.
`timesteps` interleaves the midpoints' (fractional) timesteps, 2N - 1 entries for N steps.
Parity notes (diffusers 0.42): midpoint timesteps are found in float32; no fp32 upcast in `step`; the ancestral
variant draws noise from the generator in the model output's dtype on every second pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.euler import euler_denoised
from sdxl.schedulers.heun import DiscreteSigmaConfig, discrete_schedule, final_sigma, steps_of
from sdxl.schedulers.k_family import SigmaSchedulerMixin, input_scales


@dataclass(frozen=True, eq=False, kw_only=True)
class KDPM2DiscreteSchedulerConfig(DiscreteSigmaConfig):
    """diffusers' KDPM2DiscreteScheduler config keys and defaults."""

    choices: ClassVar[dict[str, tuple]] = {
        **DiscreteSigmaConfig.choices,
        "prediction_type": ("epsilon", "v_prediction"),
    }


@dataclass(frozen=True, eq=False, kw_only=True)
class KDPM2AncestralDiscreteSchedulerConfig(KDPM2DiscreteSchedulerConfig):
    """diffusers' KDPM2AncestralDiscreteScheduler config keys and defaults (the same as KDPM2's)."""


def sigma_to_t_float32(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """sigmas.sigma_to_t done wholly in float32, as diffusers does for the KDPM2 midpoints (torch inputs)."""
    sigmas = np.asarray(sigmas, dtype=np.float32)
    log_sigma = np.log(np.maximum(sigmas, np.float32(1e-10)))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (num_train, len(sigmas))
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx.astype(np.float32) + w * high_idx.astype(np.float32)).reshape(sigmas.shape)


def repeat_all(values: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, ..., v_last, v_last, v_last]: diffusers' KDPM2 layout of per-pass sigmas (2N + 2 for N steps)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The geometric mean exp((log a + log b) / 2), by torch's lerp as diffusers (0 and nan where it gives them)."""
    return a.log().lerp(b.log(), 0.5).exp()


class KDPM2DiscreteScheduler(SigmaSchedulerMixin, Scheduler):
    """DPM-Solver-2 ("DPM2"): two model calls per step, the second at the log-midpoint sigma."""

    config_class: ClassVar[type[SchedulerConfig]] = KDPM2DiscreteSchedulerConfig
    order: ClassVar[int] = 2
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True
    ancestral: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        self.timesteps, self.sigmas = self._schedule(self.config.num_train_timesteps, None, None)
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = steps_of(num_inference_steps, None, sigmas)
        custom, final = sigmas, final_sigma(sigmas)
        timesteps, sigmas, log_sigmas = discrete_schedule(
            self.config, self.alphas_cumprod, self.num_inference_steps, custom=custom
        )
        if self.config.sigma_schedule == "karras" and custom is None:
            timesteps = timesteps.round()  # KDPM2 rounds karras timesteps (float64)
        self.log_sigmas = torch.from_numpy(log_sigmas)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))  # (N + 1,)
        if self.ancestral:
            sigmas_next = sigmas.roll(-1)
            sigmas_next[-1] = 0.0
            sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5
            sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
            sigmas_down[-1] = 0.0
            sigmas_interpol = log_midpoint(sigmas, sigmas_down)
            sigmas_interpol[-2:] = 0.0
            self.sigmas_up, self.sigmas_down = repeat_all(sigmas_up), repeat_all(sigmas_down)
            midpoints = slice(None, -2)
        else:
            sigmas_interpol = log_midpoint(sigmas, sigmas.roll(1))
            midpoints = slice(1, -1)
        self.sigmas_interpol = repeat_all(sigmas_interpol)
        timesteps = torch.from_numpy(timesteps)
        timesteps_interpol = sigma_to_t_float32(sigmas_interpol.numpy(), log_sigmas)
        timesteps_interpol = torch.from_numpy(timesteps_interpol).to(timesteps.dtype)
        # (2N - 2,): [midpoint_k, t_{k+1}] pairs after the first timestep
        pairs = torch.stack((timesteps_interpol[midpoints, None], timesteps[1:, None]), dim=-1).flatten()
        return torch.cat([timesteps[:1], pairs]), repeat_all(sigmas)

    def _prepare_steps(self) -> None:
        self._sigma = self.sigmas.unbind()
        self._sigma_interpol = self.sigmas_interpol.unbind()
        if self.ancestral:
            self._sigma_up, self._sigma_down = self.sigmas_up.unbind(), self.sigmas_down.unbind()
        self._input_scale = input_scales(self.sigmas)
        shift = 1 if self.ancestral else 0  # diffusers' ancestral variant reads the previous entry
        interpol = self.sigmas_interpol[[max(i - shift, 0) for i in range(len(self.sigmas_interpol))]]
        self._interpol_scale = input_scales(interpol)
        if shift:
            self._interpol_scale = (None, *self._interpol_scale[1:])
        self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True on the first pass of a step, False on the midpoint pass."""
        return self.sample is None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) at this pass's sigma (the midpoint sigma on the second pass)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        scales = self._input_scale if self.state_in_first_order else self._interpol_scale
        return sample / scales[self._step_index]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One pass: an Euler step to the midpoint sigma, or the full step with the midpoint's derivative."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        first = self.state_in_first_order
        if self.ancestral:
            j = i if first else i - 1
            sigma = self._sigma[i] if first else self._sigma[i - 1]
            sigma_interpol, sigma_up, sigma_down = self._sigma_interpol[j], self._sigma_up[j], self._sigma_down[i - 1]
            sigma_next = None
        else:
            sigma, sigma_next = (self._sigma[i], self._sigma[i + 1]) if first else (self._sigma[i - 1], self._sigma[i])
            sigma_interpol = self._sigma_interpol[i + 1] if first else self._sigma_interpol[i]
        sigma_input = sigma if first else sigma_interpol
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, sigma_input, sigma_input)
        if first:
            derivative = (sample - denoised) / sigma
            self.sample = sample
            prev_sample = sample + derivative * (sigma_interpol - sigma)
        else:
            derivative = (sample - denoised) / sigma_interpol
            sample, self.sample = self.sample, None
            target = sigma_down if self.ancestral else sigma_next
            prev_sample = sample + derivative * (target - sigma)
            if self.ancestral:
                noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
                prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """DPM-Solver-2 ancestral ("DPM2 a"): steps to sigma_down and adds fresh noise of size sigma_up each step."""

    config_class: ClassVar[type[SchedulerConfig]] = KDPM2AncestralDiscreteSchedulerConfig
    ancestral: ClassVar[bool] = True
