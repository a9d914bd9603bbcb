"""UniPCMultistepScheduler: Zhao et al. (2023), "UniPC: A Unified Predictor-Corrector Framework", UniP + UniC.

Parity notes (diffusers 0.42): multistep spacing (`leading` uses num_train // (N + 1)); karras timesteps are
rounded, exponential/beta ones truncated; with final_sigmas_type="sigma_min" a resampled schedule ends at its own
last sigma. The step runs in the sample's dtype; the rho coefficients come from a small linear solve in float32,
here done once per schedule (and moved to the device once) instead of at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.deis import sigma_add_noise
from sdxl.schedulers.dpm_multistep import (
    FLOW_MATCHING_OFF,
    SolverConfig,
    data_prediction,
    init_log_snr_schedule,
    resample_in_range,
)
from sdxl.schedulers.dpm_solver import VPPoint, vp_point
from sdxl.schedulers.sigmas import (
    TIMESTEP_SPACINGS,
    interp_sigmas,
    sigma_to_t,
    spaced_timesteps,
    training_sigmas,
)


@dataclass(frozen=True, eq=False, kw_only=True)
class UniPCMultistepSchedulerConfig(SolverConfig):
    """diffusers' UniPCMultistepScheduler config keys and defaults (flow matching and solver_p unsupported)."""

    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: list[int] = field(default_factory=list)
    solver_p: None = None
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    use_flow_sigmas: bool | None = False
    flow_shift: float | None = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    sigma_min: float | None = None
    sigma_max: float | None = None
    shift_terminal: float | None = None

    choices: ClassVar[dict[str, tuple]] = {
        **SolverConfig.choices,
        "solver_type": ("bh1", "bh2"),
        "solver_p": (None,),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "final_sigmas_type": ("zero", "sigma_min"),
        **FLOW_MATCHING_OFF,
        "shift_terminal": (None,),
    }
    # DPM-Solver and DEIS configs name their own solvers; diffusers maps them onto bh2
    aliases: ClassVar[dict[str, dict]] = {"solver_type": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}

    def validate(self) -> None:
        if self.solver_order > 1 and not self.lower_order_final and self.final_sigmas_type == "zero":
            raise ValueError(
                f"UniPCMultistepScheduler: solver_order={self.solver_order} with lower_order_final=False cannot take "
                "the last step to final_sigmas_type='zero' (the update divides by zero; diffusers returns NaN or "
                "fails there); set lower_order_final=True or final_sigmas_type='sigma_min'"
            )


@dataclass
class UniCoeffs:
    """The scalars of one UniP (predictor) or UniC (corrector) update of a given order, Zhao et al. Algorithms 2-3.

    `x_coeff * x - m0_coeff * m0 - res_coeff * residual`, the residual built from D1s = (m_i - m0) / rk and `rhos`
    (None where diffusers uses the fixed 0.5).
    """

    x_coeff: torch.Tensor
    m0_coeff: torch.Tensor
    res_coeff: torch.Tensor
    rks: list[torch.Tensor]
    rhos: torch.Tensor | None


def uni_coeffs(t: VPPoint, s0: VPPoint, previous: list[VPPoint], order: int, predict_x0: bool, bh: str, solve):
    """UniPC's B(h) variant coefficients for step s0 -> t using the points `previous` (s1, s2, ...).

    `solve(R, b)` picks the predictor's (R[:-1, :-1]) or corrector's (full) system.
    """
    h = t.lam - s0.lam
    rks = [(p.lam - s0.lam) / h for p in previous[: order - 1]]
    rks_t = torch.stack([*rks, torch.ones(())])
    hh = -h if predict_x0 else h
    h_phi_1 = torch.expm1(hh)  # h phi_1(h) = e^h - 1
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if bh == "bh1" else torch.expm1(hh)
    factorial_i = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks_t, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    rhos = solve(torch.stack(rows), torch.stack(b))
    if predict_x0:
        return UniCoeffs(t.sigma / s0.sigma, t.alpha * h_phi_1, t.alpha * b_h, rks, rhos)
    return UniCoeffs(t.alpha / s0.alpha, t.sigma * h_phi_1, t.sigma * b_h, rks, rhos)


def _solve(R: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.solve(R, b)
    except torch.linalg.LinAlgError:
        # only at a zero final sigma with lower_order_final=False (diffusers fails there too): fail if it is used
        return torch.full_like(b, float("nan"))


def _solve_predictor(R: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    return _solve(R[:-1, :-1], b[:-1]) if R.shape[0] > 2 else None


def _solve_corrector(R: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    return _solve(R, b) if R.shape[0] > 1 else None


class UniPCMultistepScheduler(Scheduler):
    """UniPC (bh1/bh2, data or noise prediction, orders 1-3) with diffusers' API."""

    config_class: ClassVar[type[SchedulerConfig]] = UniPCMultistepSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        init_log_snr_schedule(self)
        self.predict_x0 = self.config.predict_x0
        self.disable_corrector = list(self.config.disable_corrector)
        self.solver_p = None
        self._reset_state()
        self._points: list[VPPoint] = []

    def _reset_state(self) -> None:
        order = self.config.solver_order
        self.model_outputs: list[torch.Tensor | None] = [None] * order
        self.timestep_list: list[torch.Tensor | int | None] = [None] * order
        self.lower_order_nums = 0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        timesteps = spaced_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset, multistep=True
        )
        timesteps = timesteps.round().astype(np.int64)
        train = training_sigmas(self.alphas_cumprod).numpy()  # float32, ascending in t
        kind = cfg.sigma_schedule
        if kind is None:
            sigmas = interp_sigmas(timesteps, train)
            sigma_last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        else:
            sigmas = resample_in_range(cfg, kind, train, num_inference_steps)
            timesteps = sigma_to_t(sigmas, np.log(train))
            if kind == "karras":
                timesteps = timesteps.round()
            sigma_last = sigmas[-1] if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.num_inference_steps = len(timesteps)
        return torch.from_numpy(timesteps).to(torch.int64), torch.from_numpy(sigmas)

    def _prepare_steps(self) -> None:
        # every step's predictor and corrector coefficients for each order, rhos moved to the device once
        cfg = self.config
        self._points = pts = [vp_point(s) for s in self.sigmas.unbind()]
        device = self.timesteps.device
        n = len(self.timesteps)
        self._predictor: dict[tuple[int, int], UniCoeffs] = {}
        self._corrector: dict[tuple[int, int], UniCoeffs] = {}
        for i in range(n):
            for order in range(1, cfg.solver_order + 1):
                if i - (order - 1) >= 0:
                    previous = [pts[i - j] for j in range(1, order)]
                    c = uni_coeffs(
                        pts[i + 1], pts[i], previous, order, cfg.predict_x0, cfg.solver_type, _solve_predictor
                    )
                    c.rhos = None if c.rhos is None else c.rhos.to(device)
                    self._predictor[i, order] = c
                if i >= 1 and i - order >= 0:
                    previous = [pts[i - j - 1] for j in range(1, order)]
                    c = uni_coeffs(
                        pts[i], pts[i - 1], previous, order, cfg.predict_x0, cfg.solver_type, _solve_corrector
                    )
                    c.rhos = None if c.rhos is None else c.rhos.to(device)
                    self._corrector[i, order] = c
        self._reset_state()

    def _index_for_missing_timestep(self, timestep):
        return len(self.timesteps) - 1  # diffusers: an unknown timestep means the last step

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as x0 (predict_x0) or eps, in the model's dtype."""
        cfg = self.config
        p = self._points[self._step_index]
        if self.predict_x0:
            return data_prediction(cfg, model_output, sample, p)
        if cfg.prediction_type == "epsilon":
            return model_output
        if cfg.prediction_type == "sample":
            return (sample - p.alpha * model_output) / p.sigma
        return p.alpha * model_output + p.sigma * sample  # v_prediction

    @staticmethod
    def _residual(c: UniCoeffs, outputs: list[torch.Tensor], m0: torch.Tensor, rhos: torch.Tensor):
        """sum_k rhos[k] * (m_k - m0) / r_k over the older outputs (einsum as diffusers, so rounding matches)."""
        d1s = torch.stack([(m - m0) / rk for m, rk in zip(outputs, c.rks)], dim=1)  # (B, K, C, ...)
        return torch.einsum("k,bkc...->bc...", rhos, d1s)

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-p: x_t from the outputs so far (Zhao et al. Algorithm 2)."""
        c = self._predictor[self._step_index, order]
        outs = self.model_outputs
        m0, x = outs[-1], sample
        x_t = c.x_coeff * x - c.m0_coeff * m0
        if order > 1:
            if order == 2:
                rhos = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
            else:
                rhos = c.rhos.to(x.dtype)
            older = [outs[-(j + 1)] for j in range(1, order)]
            x_t = x_t - c.res_coeff * self._residual(c, older, m0, rhos)
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor, last_sample: torch.Tensor, this_sample: torch.Tensor, order: int):
        """UniC-p: refine this step's sample with the new model output (Zhao et al. Algorithm 3)."""
        c = self._corrector[self._step_index, order]
        outs = self.model_outputs
        m0, x = outs[-1], last_sample
        if order == 1:
            rhos = torch.ones(1, dtype=x.dtype, device=this_sample.device) * 0.5
        else:
            rhos = c.rhos.to(x.dtype)
        x_t_ = c.x_coeff * x - c.m0_coeff * m0
        d1_t = model_t - m0
        if order > 1:
            older = [outs[-(j + 1)] for j in range(1, order)]
            corr_res = self._residual(c, older, m0, rhos[:-1])
            x_t = x_t_ - c.res_coeff * (corr_res + rhos[-1] * d1_t)
        else:
            x_t = x_t_ - c.res_coeff * (rhos[-1] * d1_t)
        return x_t.to(x.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """Correct the current sample with the new output (UniC), then predict the next (UniP); `generator` unused."""
        cfg = self.config
        self._start_step(timestep)
        i = self._step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample)
        if use_corrector:
            sample = self._correct(converted, self.last_sample, sample, self.this_order)
        self.model_outputs = [*self.model_outputs[1:], converted]
        self.timestep_list = [*self.timestep_list[1:], timestep]
        order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up
        self.last_sample = sample
        prev_sample = self._predict(sample, self.this_order)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return self._output(prev_sample, None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = alpha_t * x0 + sigma_t * noise (VP) at the schedule's sigma, in the samples' dtype."""
        return sigma_add_noise(self, original_samples, noise, timesteps)
