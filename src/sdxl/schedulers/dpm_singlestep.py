"""DPMSolverSinglestepScheduler: singlestep DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), orders 1-3.

A k-th order step is spread over k consecutive timesteps: each block restarts from the sample at its first step
and uses the model outputs of the block's intermediate steps. Parity notes (diffusers 0.42): linspace spacing over
the lambda-clipped range; karras timesteps are rounded; `lower_order_final` is switched on (in the config, for
good) when the step count does not split into blocks or final_sigmas_type="zero"; the update runs in the sample's
dtype.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.ddim import reset_vp_schedule
from sdxl.schedulers.deis import sigma_add_noise
from sdxl.schedulers.dpm_multistep import (
    FLOW_MATCHING_OFF,
    SolverConfig,
    custom_level_schedule,
    data_prediction,
    init_log_snr_schedule,
    resample_in_range,
)
from sdxl.schedulers.dpm_solver import VPPoint, first_order_update, vp_point
from sdxl.schedulers.sigmas import interp_sigmas, sigma_to_t, spaced_timesteps, training_sigmas

logger = logging.getLogger(__name__)

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")


@dataclass(frozen=True, eq=False, kw_only=True)
class DPMSolverSinglestepSchedulerConfig(SolverConfig):
    """diffusers' DPMSolverSinglestepScheduler config keys and defaults (flow-matching options unsupported)."""

    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = False
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    use_flow_sigmas: bool | None = False
    flow_shift: float | None = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    choices: ClassVar[dict[str, tuple]] = {
        **SolverConfig.choices,
        "algorithm_type": ALGORITHMS,
        "solver_type": ("midpoint", "heun"),
        "final_sigmas_type": ("zero", "sigma_min"),
        "variance_type": (None, "learned", "learned_range"),
        **FLOW_MATCHING_OFF,
    }
    # DEIS and UniPC configs name their own solvers; diffusers maps them onto these
    aliases: ClassVar[dict[str, dict]] = {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    }

    def validate(self) -> None:
        if self.algorithm_type == "dpmsolver" and self.final_sigmas_type == "zero":
            raise ValueError(
                "DPMSolverSinglestepScheduler: final_sigmas_type='zero' is not supported with "
                "algorithm_type='dpmsolver'; use final_sigmas_type='sigma_min'"
            )
        if self.algorithm_type == "dpmsolver" and self.thresholding:
            raise ValueError(
                "DPMSolverSinglestepScheduler: thresholding=True is not supported with algorithm_type='dpmsolver' "
                "(diffusers fails on it); use algorithm_type='dpmsolver++'"
            )


def order_list(num_steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each step: blocks [1, 2, ..., order], shortened at the end when lower_order_final."""
    if lower_order_final:
        if order == 3:
            tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[num_steps % 3]
            blocks = num_steps // 3 - (1 if num_steps % 3 == 0 else 0)
            orders = [1, 2, 3] * blocks + tail
        elif order == 2:
            orders = [1, 2] * (num_steps // 2 - 1) + [1, 1] if num_steps % 2 == 0 else [1, 2] * (num_steps // 2) + [1]
        else:
            orders = [1] * num_steps
    else:
        orders = list(range(1, order + 1)) * (num_steps // order)
    if final_zero:
        orders[-1] = 1
    return orders


def singlestep_second_order_update(
    algorithm: str, solver_type: str, x, m0, m1, t: VPPoint, s0: VPPoint, s1: VPPoint, noise=None
) -> torch.Tensor:
    """Singlestep DPM-Solver(++)-2S from s1 to t through s0: Lu et al. (2022) Algorithm 1, (2022b) Algorithm 1."""
    h, h_0 = t.lam - s1.lam, s0.lam - s1.lam
    r0 = h_0 / h
    d0, d1 = m1, (1.0 / r0) * (m0 - m1)
    midpoint = solver_type == "midpoint"
    if algorithm == "dpmsolver++":
        base = (t.sigma / s1.sigma) * x - (t.alpha * (torch.exp(-h) - 1.0)) * d0
        if midpoint:
            return base - 0.5 * (t.alpha * (torch.exp(-h) - 1.0)) * d1
        return base + (t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
    if algorithm == "dpmsolver":
        base = (t.alpha / s1.alpha) * x - (t.sigma * (torch.exp(h) - 1.0)) * d0
        if midpoint:
            return base - 0.5 * (t.sigma * (torch.exp(h) - 1.0)) * d1
        return base - (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
    base = (t.sigma / s1.sigma * torch.exp(-h)) * x + (t.alpha * (1 - torch.exp(-2.0 * h))) * d0  # sde-dpmsolver++
    if midpoint:
        base = base + 0.5 * (t.alpha * (1 - torch.exp(-2.0 * h))) * d1
    else:
        base = base + (t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
    return base + t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


def singlestep_third_order_update(
    algorithm: str, solver_type: str, x, m0, m1, m2, t: VPPoint, s0: VPPoint, s1: VPPoint, s2: VPPoint, noise=None
) -> torch.Tensor:
    """Singlestep DPM-Solver(++)-3S from s2 to t through s1, s0: Lu et al. (2022) Algorithm 2, (2022b) Appendix B."""
    h, h_0, h_1 = t.lam - s2.lam, s0.lam - s2.lam, s1.lam - s2.lam
    r0, r1 = h_0 / h, h_1 / h
    d0 = m2
    d1_0, d1_1 = (1.0 / r1) * (m1 - m2), (1.0 / r0) * (m0 - m2)
    if solver_type == "heun":
        d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
        d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    if algorithm == "dpmsolver++":
        base = (t.sigma / s2.sigma) * x - (t.alpha * (torch.exp(-h) - 1.0)) * d0
        if solver_type == "midpoint":
            return base + (t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1_1
        return (
            base
            + (t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (t.alpha * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
    if algorithm == "dpmsolver":
        base = (t.alpha / s2.alpha) * x - (t.sigma * (torch.exp(h) - 1.0)) * d0
        if solver_type == "midpoint":
            return base - (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1_1
        return (
            base
            - (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
            - (t.sigma * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2
        )
    base = (t.sigma / s2.sigma * torch.exp(-h)) * x + (t.alpha * (1.0 - torch.exp(-2.0 * h))) * d0  # sde
    if solver_type == "midpoint":
        base = base + (t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1_1
    else:
        base = (
            base
            + (t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
            + (t.alpha * ((1.0 - torch.exp(-2.0 * h) + (-2.0 * h)) / (-2.0 * h) ** 2 - 0.5)) * d2
        )
    return base + t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


class DPMSolverSinglestepScheduler(Scheduler):
    """Singlestep DPM-Solver++ (default), DPM-Solver and SDE-DPM-Solver++, with diffusers' API."""

    config_class: ClassVar[type[SchedulerConfig]] = DPMSolverSinglestepSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        reset_vp_schedule(self, False)  # no rescale_betas_zero_snr key in this scheduler
        init_log_snr_schedule(self)
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.sample: torch.Tensor | None = None
        self.order_list = self._order_list(self.config.num_train_timesteps)
        self._points: list[VPPoint] = []

    def _order_list(self, num_steps: int) -> list[int]:
        cfg = self.config
        return order_list(num_steps, cfg.solver_order, cfg.lower_order_final, cfg.final_sigmas_type == "zero")

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The solver order of each of `num_inference_steps` steps (diffusers' method)."""
        return self._order_list(num_inference_steps)

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        if sigmas is not None:  # a schedule type's levels
            timesteps, sigmas = custom_level_schedule(self, sigmas)
            self._settle_orders(self.num_inference_steps)
            return timesteps, sigmas
        if timesteps is not None:
            timesteps = timesteps.astype(np.int64)
            num_inference_steps = len(timesteps)
        else:
            clipped_idx = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            timesteps = spaced_timesteps(
                "linspace",
                num_inference_steps,
                cfg.num_train_timesteps,
                last_timestep=cfg.num_train_timesteps - clipped_idx,
                multistep=True,
            )
            timesteps = timesteps.round().astype(np.int64)
        train = training_sigmas(self.alphas_cumprod).numpy()  # float32, ascending in t
        kind = cfg.sigma_schedule
        if kind is None:
            sigmas = interp_sigmas(timesteps, train)
        else:
            sigmas = resample_in_range(cfg, kind, train, num_inference_steps)
            timesteps = sigma_to_t(sigmas, np.log(train))
            if kind == "karras":
                timesteps = timesteps.round()
        sigma_last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.num_inference_steps = num_inference_steps
        self._settle_orders(num_inference_steps)
        return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(sigmas)

    def _settle_orders(self, num_inference_steps: int) -> None:
        """Each step's solver order; as diffusers, turn lower_order_final on (for good) where blocks cannot end
        cleanly."""
        cfg = self.config
        if not cfg.lower_order_final and num_inference_steps % cfg.solver_order != 0:
            logger.warning(
                "DPMSolverSinglestepScheduler: %d steps do not split into blocks of %d; setting lower_order_final=True",
                num_inference_steps,
                cfg.solver_order,
            )
            self._config = cfg = dataclasses.replace(cfg, lower_order_final=True)
        if not cfg.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning(
                "DPMSolverSinglestepScheduler: final_sigmas_type='zero' needs lower_order_final=True; setting it"
            )
            self._config = dataclasses.replace(cfg, lower_order_final=True)
        self.order_list = self._order_list(num_inference_steps)

    def _prepare_steps(self) -> None:
        self._points = [vp_point(s) for s in self.sigmas.unbind()]
        self.model_outputs = [None] * self.config.solver_order
        self.sample = None

    def _index_for_missing_timestep(self, timestep):
        return len(self.timesteps) - 1  # diffusers: an unknown timestep means the last step

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as x0 (DPM-Solver++) or eps (DPM-Solver), in the model's dtype."""
        cfg = self.config
        p = self._points[self._step_index]
        learned = cfg.variance_type in ("learned", "learned_range")
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            if cfg.prediction_type == "epsilon" and learned:
                model_output = model_output[:, :3]  # diffusers keeps the first 3 channels
            return data_prediction(cfg, model_output, sample, p)
        if cfg.prediction_type == "epsilon":
            return model_output[:, :3] if learned else model_output
        if cfg.prediction_type == "sample":
            return (sample - p.alpha * model_output) / p.sigma
        return p.alpha * model_output + p.sigma * sample  # v_prediction

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One step of the current block; SDE-DPM-Solver++ draws fresh noise from `generator` every step."""
        cfg = self.config
        self._start_step(timestep)
        i = self._step_index
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]
        noise = None
        if cfg.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        order = self.order_list[i]
        while self.model_outputs[-order] is None:  # a block entered mid-way (img2img) starts lower
            order -= 1
        if order == 1:
            self.sample = sample
        pts, outs, x = self._points, self.model_outputs, self.sample
        if order == 1:
            prev = first_order_update(cfg.algorithm_type, x, outs[-1], pts[i + 1], pts[i], noise)
        elif order == 2:
            prev = singlestep_second_order_update(
                cfg.algorithm_type, cfg.solver_type, x, outs[-1], outs[-2], pts[i + 1], pts[i], pts[i - 1], noise
            )
        else:
            prev = singlestep_third_order_update(
                cfg.algorithm_type,
                cfg.solver_type,
                x,
                outs[-1],
                outs[-2],
                outs[-3],
                pts[i + 1],
                pts[i],
                pts[i - 1],
                pts[i - 2],
                noise,
            )
        self._step_index += 1
        return self._output(prev, None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = alpha_t * x0 + sigma_t * noise (VP) at the schedule's sigma, in the samples' dtype."""
        return sigma_add_noise(self, original_samples, noise, timesteps)
