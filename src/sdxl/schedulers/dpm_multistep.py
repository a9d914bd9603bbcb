"""DPMSolverMultistepScheduler: DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), orders 1-3, ODE and SDE.

Parity notes (diffusers 0.42): timesteps are int64; `leading` spaces by num_train // (N + 1); karras/lu sigmas
span the full training range with rounded timesteps; the final step with final_sigmas_type="zero" is first
order. The model output is converted to x0 (or eps) in the model's dtype, the update runs on a float32 sample.
The update formulas and the order rule are `dpm_solver.py`'s (pure functions, shared with the EDM and singlestep
variants); this module keeps the config, the x0/eps conversion and the schedule the family shares, and the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.dpm_solver import (  # noqa: F401  (the update formulas are re-exported from their former home)
    VPPoint,
    first_order_update,
    multistep_order,
    multistep_update,
    second_order_update,
    third_order_update,
    vp_point,
)
from sdxl.schedulers.sigmas import (
    TIMESTEP_SPACINGS,
    interp_sigmas,
    lu_lambdas,
    resample_sigmas,
    sigma_to_alpha_sigma_t,
    sigma_to_t,
    spaced_timesteps,
    training_sigmas,
)

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")


# flow-matching keys: accepted only at their off values
FLOW_MATCHING_OFF: dict[str, tuple] = {
    "use_flow_sigmas": (False, None),
    "use_dynamic_shifting": (False, None),
    "time_shift_type": ("exponential",),
}


@dataclass(frozen=True, eq=False, kw_only=True)
class SolverConfig(SchedulerConfig):
    """Keys leading every DPM-Solver / DEIS / UniPC config: solver order and dynamic thresholding."""

    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    choices: ClassVar[dict[str, tuple]] = {
        **SchedulerConfig.choices,
        "solver_order": (1, 2, 3),
    }


@dataclass(frozen=True, eq=False, kw_only=True)
class DPMSolverMultistepSchedulerConfig(SolverConfig):
    """diffusers' DPMSolverMultistepScheduler config keys and defaults (flow-matching options unsupported)."""

    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    use_lu_lambdas: bool | None = False
    use_flow_sigmas: bool | None = False
    flow_shift: float | None = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"

    choices: ClassVar[dict[str, tuple]] = {
        **SolverConfig.choices,
        "algorithm_type": ALGORITHMS,
        "solver_type": ("midpoint", "heun"),
        "final_sigmas_type": ("zero", "sigma_min"),
        "variance_type": (None, "learned", "learned_range"),
        "timestep_spacing": TIMESTEP_SPACINGS,
        **FLOW_MATCHING_OFF,
    }
    # DEIS and UniPC configs name their own solvers; diffusers maps them onto these
    aliases: ClassVar[dict[str, dict]] = {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    }
    sigma_schedule_keys: ClassVar[dict[str, str]] = {
        **SchedulerConfig.sigma_schedule_keys,
        "use_lu_lambdas": "lu",
    }

    def validate(self) -> None:
        if self.algorithm_type in ("dpmsolver", "sde-dpmsolver") and self.final_sigmas_type == "zero":
            raise ValueError(
                f"DPMSolverMultistepScheduler: final_sigmas_type='zero' is not supported with "
                f"algorithm_type={self.algorithm_type!r}; use final_sigmas_type='sigma_min'"
            )
        if self.algorithm_type == "sde-dpmsolver" and self.solver_order == 3:
            raise ValueError(
                "DPMSolverMultistepScheduler: solver_order=3 is not supported with algorithm_type='sde-dpmsolver' "
                "(diffusers has no such update); use solver_order 1 or 2, or 'sde-dpmsolver++'"
            )


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding: Saharia et al. (2022), Imagen section 2.3 (clip x0 to the ratio-quantile of |x0|)."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile needs float32; clamp has no CPU half kernel
    flat = sample.reshape(batch, channels * int(np.prod(rest)))  # (B, C*H*W)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)  # (B, 1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def data_prediction(cfg: SolverConfig, model_output: torch.Tensor, sample: torch.Tensor, p: VPPoint) -> torch.Tensor:
    """x0 from the model output at noise level `p` (per `cfg.prediction_type`), thresholded if `cfg.thresholding`."""
    if cfg.prediction_type == "epsilon":
        x0 = (sample - p.sigma * model_output) / p.alpha
    elif cfg.prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction
        x0 = p.alpha * sample - p.sigma * model_output
    if cfg.thresholding:
        x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    return x0


def init_log_snr_schedule(scheduler: Scheduler) -> None:
    """alpha_t, sigma_t, lambda_t, training sigmas and float32 timesteps T-1..0 of the DPM/UniPC/DEIS family."""
    scheduler.alpha_t = torch.sqrt(scheduler.alphas_cumprod)
    scheduler.sigma_t = torch.sqrt(1 - scheduler.alphas_cumprod)
    scheduler.lambda_t = torch.log(scheduler.alpha_t) - torch.log(scheduler.sigma_t)
    scheduler.sigmas = training_sigmas(scheduler.alphas_cumprod)
    num_train = scheduler.config.num_train_timesteps
    scheduler.timesteps = torch.from_numpy(np.linspace(0, num_train - 1, num_train, dtype=np.float32)[::-1].copy())


def resample_in_range(cfg: SchedulerConfig, kind: str, train: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """`kind` sigmas over [sigma_min, sigma_max]: the config's (or ones carried over from another scheduler's
    config, as in diffusers), else the range of the ascending training sigmas `train`."""
    sigma_min, sigma_max = cfg.get("sigma_min"), cfg.get("sigma_max")
    sigma_min = float(train[0]) if sigma_min is None else sigma_min
    sigma_max = float(train[-1]) if sigma_max is None else sigma_max
    return resample_sigmas(kind, sigma_min, sigma_max, num_inference_steps)


def custom_level_schedule(scheduler: Scheduler, sigmas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 timesteps, float32 levels) of custom levels (a schedule type's, final level last) for the DPM-Solver
    family: the timesteps are the levels' rounded fractional training timesteps, as their karras path has them."""
    log_sigmas = np.log(training_sigmas(scheduler.alphas_cumprod).numpy())
    scheduler.num_inference_steps = len(sigmas) - 1
    timesteps = sigma_to_t(np.asarray(sigmas[:-1], dtype=np.float64), log_sigmas).round()
    return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(np.asarray(sigmas, dtype=np.float32))


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ 2M (default), 3M, SDE and the original DPM-Solver, with diffusers' API."""

    config_class: ClassVar[type[SchedulerConfig]] = DPMSolverMultistepSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        init_log_snr_schedule(self)
        self._points: list[VPPoint] = []  # filled by set_timesteps; step refuses to run before it
        self._num_steps = 0
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        if sigmas is not None:  # a schedule type's levels: rounded timesteps, as DPM's karras path
            return custom_level_schedule(self, sigmas)
        if timesteps is not None:
            timesteps = timesteps.astype(np.int64)
        else:
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last_timestep = int(cfg.num_train_timesteps - clipped_idx)
            timesteps = spaced_timesteps(
                cfg.timestep_spacing,
                num_inference_steps,
                cfg.num_train_timesteps,
                cfg.steps_offset,
                last_timestep=last_timestep,
                multistep=True,
            )
            timesteps = timesteps.round().astype(np.int64)
        train = training_sigmas(self.alphas_cumprod).numpy()  # float32, ascending in t
        log_sigmas = np.log(train)
        kind = cfg.sigma_schedule
        if kind is None:
            sigmas = interp_sigmas(timesteps, train)
        else:
            if kind == "lu":
                lambdas = np.flip(log_sigmas)
                sigmas = np.exp(lu_lambdas(float(lambdas[-1]), float(lambdas[0]), num_inference_steps))
            else:
                sigmas = resample_in_range(cfg, kind, train, num_inference_steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if kind in ("karras", "lu") and cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        sigma_last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.num_inference_steps = len(timesteps)
        return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(sigmas)

    def _prepare_steps(self) -> None:
        # per-step VP scalars as 0-dim CPU tensors, computed element by element as diffusers does each step
        self._points = [vp_point(s) for s in self.sigmas.unbind()]
        self._num_steps = len(self.timesteps)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _index_for_missing_timestep(self, timestep: float | torch.Tensor) -> int:
        return len(self.timesteps) - 1  # diffusers: an unknown timestep means the last step

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as x0 (DPM-Solver++) or eps (DPM-Solver), in the model's dtype."""
        cfg = self.config
        point = self._points[self._step_index]
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            if cfg.prediction_type == "epsilon" and cfg.variance_type in ("learned", "learned_range"):
                model_output = model_output[:, :3]  # diffusers keeps the first 3 channels
            return data_prediction(cfg, model_output, sample, point)
        if cfg.prediction_type == "epsilon":
            eps = model_output[:, :3] if cfg.variance_type in ("learned", "learned_range") else model_output
        elif cfg.prediction_type == "sample":
            eps = (sample - point.alpha * model_output) / point.sigma
        else:  # v_prediction
            eps = point.alpha * model_output + point.sigma * sample
        if cfg.thresholding:
            x0 = (sample - point.sigma * eps) / point.alpha
            x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            eps = (sample - point.alpha * x0) / point.sigma
        return eps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One multistep update: order rises to `solver_order` as outputs accumulate and drops at the end."""
        cfg = self.config
        self._start_step(timestep)
        i, n = self._step_index, self._num_steps
        order = multistep_order(cfg, i, n, self.lower_order_nums)

        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
        prev = multistep_update(cfg, order, sample, self.model_outputs, self._points, i, noise)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return self._output(prev.to(model_output.dtype), None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = alpha_t * x0 + sigma_t * noise (VP), computed in the samples' dtype as diffusers does."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule = self.timesteps.to(original_samples.device)
        indices = self._add_noise_indices(timesteps.to(original_samples.device), schedule)
        sigma = sigmas[indices].flatten()
        sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
        alpha_t, sigma_t = sigma_to_alpha_sigma_t(sigma)
        return alpha_t * original_samples + sigma_t * noise
