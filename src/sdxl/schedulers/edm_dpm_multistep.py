"""EDMDPMSolverMultistepScheduler: DPM-Solver++ (Lu et al. 2022b) 1-3M and SDE on the EDM schedule, diffusers' API.

The sample is pre-scaled by c_in before the model, so in DPM-Solver's VP terms alpha_t = 1 and sigma_t = sigma
(lambda = -log sigma); the model output becomes x0 by the EDM preconditioning (edm_euler.edm_denoised). The
update formulas are dpm_solver.py's.

Parity notes (diffusers 0.42): the ramps are float32; the step runs in the sample's dtype (no float32 upcast, no
cast back), SDE noise is drawn in the model output's dtype; the final sigma with final_sigmas_type="sigma_min"
is the config's sigma_min (not the schedule's last); the last step is first order when the final sigma is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerOutput
from sdxl.schedulers.config import ConfigMapping
from sdxl.schedulers.dpm_multistep import threshold_sample
from sdxl.schedulers.dpm_solver import VPPoint, multistep_order, multistep_update
from sdxl.schedulers.edm_euler import EDMConfig, EDMSchedulerMixin, c_noise, edm_denoised, edm_sigmas


@dataclass(frozen=True, eq=False, kw_only=True)
class EDMDPMSolverMultistepSchedulerConfig(EDMConfig):
    """diffusers' EDMDPMSolverMultistepScheduler config keys and defaults."""

    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False

    choices: ClassVar[dict[str, tuple]] = {
        **EDMConfig.choices,
        "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
        "solver_type": ("midpoint", "heun"),
    }
    aliases: ClassVar[dict[str, dict]] = {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    }

    def validate(self) -> None:
        if self.algorithm_type == "sde-dpmsolver++" and self.solver_order == 3:
            raise ValueError(
                "EDMDPMSolverMultistepScheduler: solver_order=3 is not supported with algorithm_type="
                "'sde-dpmsolver++' (diffusers has no such update and fails at the third step); use solver_order 1 or 2"
            )


def edm_point(sigma: torch.Tensor) -> VPPoint:
    """The VP point of an EDM noise level: alpha = 1 (an int64 tensor, as diffusers), sigma, lambda = -log sigma."""
    alpha = torch.tensor(1)
    return VPPoint(alpha, sigma, torch.log(alpha) - torch.log(sigma))


class EDMDPMSolverMultistepScheduler(EDMSchedulerMixin, Scheduler):
    """DPM-Solver++ 2M (default), 1M, 3M and SDE on the EDM sigma schedule."""

    config_class: ClassVar[type[ConfigMapping]] = EDMDPMSolverMultistepSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        sigmas = edm_sigmas(self.config, torch.linspace(0, 1, self.config.num_train_timesteps))
        self.timesteps = c_noise(sigmas)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = num_inference_steps
        sigmas = edm_sigmas(self.config, torch.linspace(0, 1, num_inference_steps)).to(torch.float32)
        last = self.config.sigma_min if self.config.final_sigmas_type == "sigma_min" else 0
        return c_noise(sigmas), torch.cat([sigmas, torch.tensor([last], dtype=torch.float32)])

    def _prepare_steps(self) -> None:
        super()._prepare_steps()
        self._points = [edm_point(s) for s in self._sigma]
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _index_for_missing_timestep(self, timestep: float | torch.Tensor) -> int:
        return len(self.timesteps) - 1  # diffusers: an unknown timestep means the last step

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as x0 (EDM preconditioning), thresholded if the config says so."""
        cfg = self.config
        x0 = edm_denoised(cfg, sample, model_output, self._sigma[self._step_index])
        if cfg.thresholding:
            x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One multistep update: order rises to `solver_order` as outputs accumulate and drops at the end."""
        cfg = self.config
        self._start_step(timestep)
        i, n = self._step_index, len(self.timesteps)
        order = multistep_order(cfg, i, n, self.lower_order_nums)
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]
        noise = None
        if cfg.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev = multistep_update(cfg, order, sample, self.model_outputs, self._points, i, noise)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return self._output(prev, None, return_dict)
