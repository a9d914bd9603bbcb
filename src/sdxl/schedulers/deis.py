"""DEISMultistepScheduler: Zhang & Chen (2023), "Fast Sampling of Diffusion Models with Exponential Integrator".

The log-rho multistep variant (DEIS-1/2/3 in the data-independent rho = sigma/alpha variable), diffusers' API.
Parity notes (diffusers 0.42): multistep spacing (`leading` uses num_train // (N + 1)); karras timesteps are
rounded; after a karras/exponential/beta schedule the last sigma repeats (no zero sigma); the step runs in the
sample's dtype; the Lagrange coefficients are evaluated with numpy's log on float32 scalars, as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.ddim import reset_vp_schedule
from sdxl.schedulers.dpm_multistep import (
    FLOW_MATCHING_OFF,
    SolverConfig,
    data_prediction,
    init_log_snr_schedule,
    resample_in_range,
)
from sdxl.schedulers.dpm_solver import first_order_update, vp_point
from sdxl.schedulers.sigmas import (
    TIMESTEP_SPACINGS,
    interp_sigmas,
    sigma_to_alpha_sigma_t,
    sigma_to_t,
    spaced_timesteps,
    training_sigmas,
)


@dataclass(frozen=True, eq=False, kw_only=True)
class DEISMultistepSchedulerConfig(SolverConfig):
    """diffusers' DEISMultistepScheduler config keys and defaults (flow-matching options unsupported)."""

    algorithm_type: str = "deis"
    solver_type: str = "logrho"
    lower_order_final: bool = True
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    use_flow_sigmas: bool | None = False
    flow_shift: float | None = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    choices: ClassVar[dict[str, tuple]] = {
        **SolverConfig.choices,
        "algorithm_type": ("deis",),
        "solver_type": ("logrho",),
        "timestep_spacing": TIMESTEP_SPACINGS,
        **FLOW_MATCHING_OFF,
    }
    # DPM-Solver and UniPC configs name their own solvers; diffusers maps them onto these
    aliases: ClassVar[dict[str, dict]] = {
        "algorithm_type": {"dpmsolver": "deis", "dpmsolver++": "deis"},
        "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"},
    }


def _log(x: torch.Tensor) -> torch.Tensor:
    """numpy's float32 log of a 0-dim tensor, as diffusers' np.log(tensor) evaluates the DEIS coefficients."""
    return torch.from_numpy(np.asarray(np.log(x.numpy())))


def deis_second_order_coeffs(rho_t, rho_s0, rho_s1) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrals of the linear Lagrange basis in log rho over [rho_s0, rho_t] (DEIS eq. 15, r = 1)."""

    def ind_fn(t, b, c):
        return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))

    coef1 = ind_fn(rho_t, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s0, rho_s1)
    coef2 = ind_fn(rho_t, rho_s1, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s0)
    return coef1, coef2


def deis_third_order_coeffs(rho_t, rho_s0, rho_s1, rho_s2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrals of the quadratic Lagrange basis in log rho over [rho_s0, rho_t] (DEIS eq. 15, r = 2)."""

    def ind_fn(t, b, c, d):
        numerator = t * (
            _log(c) * (_log(d) - _log(t) + 1) - _log(d) * _log(t) + _log(d) + _log(t) ** 2 - 2 * _log(t) + 2
        )
        return numerator / ((_log(b) - _log(c)) * (_log(b) - _log(d)))

    coef1 = ind_fn(rho_t, rho_s0, rho_s1, rho_s2) - ind_fn(rho_s0, rho_s0, rho_s1, rho_s2)
    coef2 = ind_fn(rho_t, rho_s1, rho_s2, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s2, rho_s0)
    coef3 = ind_fn(rho_t, rho_s2, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s2, rho_s0, rho_s1)
    return coef1, coef2, coef3


class DEISMultistepScheduler(Scheduler):
    """DEIS-1/2/3 (log-rho multistep), with diffusers' API."""

    config_class: ClassVar[type[SchedulerConfig]] = DEISMultistepSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        reset_vp_schedule(self, False)  # DEIS has no rescale_betas_zero_snr key
        init_log_snr_schedule(self)
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._points = []

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        timesteps = spaced_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset, multistep=True
        )
        timesteps = timesteps.round().astype(np.int64)
        train = training_sigmas(self.alphas_cumprod).numpy()  # float32, ascending in t
        log_sigmas = np.log(train)
        kind = cfg.sigma_schedule
        if kind is None:
            sigmas = np.concatenate([interp_sigmas(timesteps, train), [train[0]]])
        else:
            sigmas = resample_in_range(cfg, kind, train, num_inference_steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if kind == "karras":
                timesteps = timesteps.round()
            sigmas = np.concatenate([sigmas, sigmas[-1:]])  # the last step keeps the final sigma
        self.num_inference_steps = len(timesteps)
        return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(sigmas.astype(np.float32))

    def _prepare_steps(self) -> None:
        self._points = pts = [vp_point(s) for s in self.sigmas.unbind()]
        rho = [p.sigma / p.alpha for p in pts]
        # Lagrange coefficients of every step for orders 2 and 3, so `step` never reads a tensor on the host
        n, order = len(self.timesteps), self.config.solver_order
        self._coeffs2 = [
            deis_second_order_coeffs(rho[i + 1], rho[i], rho[i - 1]) if i >= 1 else None for i in range(n)
        ]
        self._coeffs3 = [
            deis_third_order_coeffs(rho[i + 1], rho[i], rho[i - 1], rho[i - 2]) if i >= 2 and order == 3 else None
            for i in range(n)
        ]
        self.model_outputs = [None] * order
        self.lower_order_nums = 0

    def _index_for_missing_timestep(self, timestep):
        return len(self.timesteps) - 1  # diffusers: an unknown timestep means the last step

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as eps (through x0, so thresholding applies), in the model's dtype."""
        cfg = self.config
        p = self._points[self._step_index]
        x0 = data_prediction(cfg, model_output, sample, p)
        return (sample - p.alpha * x0) / p.sigma

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One DEIS step; the order rises to `solver_order` as outputs accumulate (`generator` is unused)."""
        cfg = self.config
        self._start_step(timestep)
        i, n = self._step_index, len(self.timesteps)
        lower_order_final = i == n - 1 and cfg.lower_order_final and n < 15
        lower_order_second = i == n - 2 and cfg.lower_order_final and n < 15
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]
        pts, outs = self._points, self.model_outputs
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev = first_order_update("dpmsolver", sample, model_output, pts[i + 1], pts[i])
        else:
            t, s0 = pts[i + 1], pts[i]
            if cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
                coef1, coef2 = self._coeffs2[i]
                prev = t.alpha * (sample / s0.alpha + coef1 * outs[-1] + coef2 * outs[-2])
            else:
                coef1, coef2, coef3 = self._coeffs3[i]
                prev = t.alpha * (sample / s0.alpha + coef1 * outs[-1] + coef2 * outs[-2] + coef3 * outs[-3])
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return self._output(prev, None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = alpha_t * x0 + sigma_t * noise (VP) at the schedule's sigma, in the samples' dtype."""
        return sigma_add_noise(self, original_samples, noise, timesteps)


def sigma_add_noise(
    scheduler: Scheduler, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """VP noising at the sigma of each timestep's step index (the multistep solvers' add_noise)."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    schedule = scheduler.timesteps.to(original_samples.device)
    indices = scheduler._add_noise_indices(timesteps.to(original_samples.device), schedule)
    sigma = sigmas[indices].flatten()
    sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
    alpha_t, sigma_t = sigma_to_alpha_sigma_t(sigma)
    return alpha_t * original_samples + sigma_t * noise
