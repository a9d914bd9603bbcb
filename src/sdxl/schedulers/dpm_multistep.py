"""DPMSolverMultistepScheduler: DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), orders 1-3, ODE and SDE.

Parity notes (diffusers 0.42): timesteps are int64; `leading` spaces by num_train // (N + 1); karras/lu sigmas
span the full training range with rounded timesteps; the final step with final_sigmas_type="zero" is first
order. The model output is converted to x0 (or eps) in the model's dtype, the update runs on a float32 sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
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


class VPPoint(NamedTuple):
    """One noise level in VP terms: x_t = alpha * x0 + sigma * eps, lam = log(alpha / sigma). 0-dim float32 tensors."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def vp_point(sigma: torch.Tensor) -> VPPoint:
    """The VP point of a VE sigma (diffusers' _sigma_to_alpha_sigma_t, then lambda = log alpha - log sigma)."""
    alpha_t, sigma_t = sigma_to_alpha_sigma_t(sigma)
    return VPPoint(alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t))


def first_order_update(algorithm: str, x, m0, t: VPPoint, s: VPPoint, noise=None) -> torch.Tensor:
    """DPM-Solver-1 (= DDIM): Lu et al. (2022b) eq. 5 for ++, (2022) eq. 3.7 for eps; SDE forms from their SDE variant."""
    h = t.lam - s.lam
    if algorithm == "dpmsolver++":
        return (t.sigma / s.sigma) * x - (t.alpha * (torch.exp(-h) - 1.0)) * m0
    if algorithm == "dpmsolver":
        return (t.alpha / s.alpha) * x - (t.sigma * (torch.exp(h) - 1.0)) * m0
    if algorithm == "sde-dpmsolver++":
        return (
            (t.sigma / s.sigma * torch.exp(-h)) * x
            + (t.alpha * (1 - torch.exp(-2.0 * h))) * m0
            + t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )
    return (  # sde-dpmsolver
        (t.alpha / s.alpha) * x
        - 2.0 * (t.sigma * (torch.exp(h) - 1.0)) * m0
        + t.sigma * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
    )


def second_order_update(
    algorithm: str, solver_type: str, x, m0, m1, t: VPPoint, s0: VPPoint, s1: VPPoint, noise=None
) -> torch.Tensor:
    """Multistep DPM-Solver(++)-2M: Lu et al. (2022b) Algorithm 2 (midpoint) and its Heun-type variant."""
    h, h_0 = t.lam - s0.lam, s0.lam - s1.lam
    r0 = h_0 / h
    d0, d1 = m0, (1.0 / r0) * (m0 - m1)
    midpoint = solver_type == "midpoint"
    if algorithm == "dpmsolver++":
        phi = t.alpha * (torch.exp(-h) - 1.0)
        base = (t.sigma / s0.sigma) * x - phi * d0
        if midpoint:
            return base - 0.5 * (t.alpha * (torch.exp(-h) - 1.0)) * d1
        return base + (t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
    if algorithm == "dpmsolver":
        base = (t.alpha / s0.alpha) * x - (t.sigma * (torch.exp(h) - 1.0)) * d0
        if midpoint:
            return base - 0.5 * (t.sigma * (torch.exp(h) - 1.0)) * d1
        return base - (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
    if algorithm == "sde-dpmsolver++":
        base = (t.sigma / s0.sigma * torch.exp(-h)) * x + (t.alpha * (1 - torch.exp(-2.0 * h))) * d0
        if midpoint:
            base = base + 0.5 * (t.alpha * (1 - torch.exp(-2.0 * h))) * d1
        else:
            base = base + (t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
        return base + t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
    base = (t.alpha / s0.alpha) * x - 2.0 * (t.sigma * (torch.exp(h) - 1.0)) * d0  # sde-dpmsolver
    if midpoint:
        base = base - (t.sigma * (torch.exp(h) - 1.0)) * d1
    else:
        base = base - 2.0 * (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
    return base + t.sigma * torch.sqrt(torch.exp(2 * h) - 1.0) * noise


def third_order_update(
    algorithm: str, x, m0, m1, m2, t: VPPoint, s0: VPPoint, s1: VPPoint, s2: VPPoint, noise=None
) -> torch.Tensor:
    """Multistep DPM-Solver(++)-3M: Lu et al. (2022) Algorithm 3 / (2022b) Appendix B."""
    h, h_0, h_1 = t.lam - s0.lam, s0.lam - s1.lam, s1.lam - s2.lam
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    if algorithm == "dpmsolver++":
        return (
            (t.sigma / s0.sigma) * x
            - (t.alpha * (torch.exp(-h) - 1.0)) * m0
            + (t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (t.alpha * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
    if algorithm == "dpmsolver":
        return (
            (t.alpha / s0.alpha) * x
            - (t.sigma * (torch.exp(h) - 1.0)) * m0
            - (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
            - (t.sigma * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2
        )
    return (  # sde-dpmsolver++ (sde-dpmsolver has no third order; the config rejects it)
        (t.sigma / s0.sigma * torch.exp(-h)) * x
        + (t.alpha * (1.0 - torch.exp(-2.0 * h))) * m0
        + (t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
        + (t.alpha * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        + t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
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


def multistep_order(cfg: SolverConfig, i: int, n: int, lower_order_nums: int) -> int:
    """The order of step i of n (diffusers' rules): it rises with the outputs collected so far and drops at the end
    (first order for a final sigma of zero, `euler_at_final`, or `lower_order_final` under 15 steps)."""
    final = i == n - 1 and (
        cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
    )
    second = i == n - 2 and cfg.lower_order_final and n < 15
    if cfg.solver_order == 1 or lower_order_nums < 1 or final:
        return 1
    if cfg.solver_order == 2 or lower_order_nums < 2 or second:
        return 2
    return 3


def multistep_update(
    cfg: SolverConfig, order: int, x: torch.Tensor, outs: list, points: list[VPPoint], i: int, noise=None
) -> torch.Tensor:
    """x at points[i + 1] from x at points[i] and the last `order` converted model outputs `outs`."""
    algorithm, t = cfg.algorithm_type, points[i + 1]
    if order == 1:
        return first_order_update(algorithm, x, outs[-1], t, points[i], noise)
    if order == 2:
        return second_order_update(algorithm, cfg.solver_type, x, outs[-1], outs[-2], t, points[i], points[i - 1], noise)
    return third_order_update(
        algorithm, x, outs[-1], outs[-2], outs[-3], t, points[i], points[i - 1], points[i - 2], noise
    )


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
