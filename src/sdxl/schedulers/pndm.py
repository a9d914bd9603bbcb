"""PNDMScheduler: Liu et al. (2022), "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PLMS and PRK).

Parity notes (diffusers 0.42): with `skip_prk_steps=True` (SDXL's config) the schedule repeats the second
timestep and runs linear multistep (PLMS) from a counter, warming up with a 2-stage step; without it, four
Runge-Kutta steps (12 model calls) come first. The previous timestep is `t - num_train // N`; the arithmetic runs
in the sample's dtype with 0-dim float32 alpha_bar scalars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.ddim import reset_vp_schedule, vp_add_noise
from sdxl.schedulers.sigmas import TIMESTEP_SPACINGS, spaced_timesteps

PNDM_ORDER = 4  # Runge-Kutta warm-up steps before PLMS


@dataclass(frozen=True, eq=False, kw_only=True)
class PNDMSchedulerConfig(SchedulerConfig):
    """diffusers' PNDMScheduler config keys and defaults."""

    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    choices: ClassVar[dict[str, tuple]] = {
        **SchedulerConfig.choices,
        "prediction_type": ("epsilon", "v_prediction"),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }
    sigma_schedule_keys: ClassVar[dict[str, str]] = {}  # no sigma schedules (use_karras_sigmas etc. are ignored)


def pndm_transfer(sample, model_output, alpha_prod_t, alpha_prod_t_prev, prediction_type: str):
    """The transfer part phi(x_t, eps, t, t-delta) of PNDM, Liu et al. (2022) eq. 11 (an exact DDIM step)."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    if prediction_type == "v_prediction":
        model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
    denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5)
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom


class PNDMScheduler(Scheduler):
    """PLMS (with `skip_prk_steps=True`) or PRK warm-up then PLMS, with diffusers' API."""

    config_class: ClassVar[type[SchedulerConfig]] = PNDMSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        cfg = self.config
        reset_vp_schedule(self, False)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = PNDM_ORDER
        self.timesteps = None  # as diffusers: no schedule before set_timesteps
        self.sigmas = torch.empty(0)
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.counter = 0
        self.ets: list[torch.Tensor] = []
        self.cur_model_output: torch.Tensor | int = 0
        self.cur_sample: torch.Tensor | None = None

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        n, num_train = num_inference_steps, cfg.num_train_timesteps
        if not cfg.skip_prk_steps and n < PNDM_ORDER:
            raise ValueError(
                f"PNDMScheduler with skip_prk_steps=False needs at least {PNDM_ORDER} steps, got {n}; "
                "use more steps or skip_prk_steps=True"
            )
        self.num_inference_steps = n
        ascending = spaced_timesteps(cfg.timestep_spacing, n, num_train, cfg.steps_offset)[::-1].round()
        ascending = ascending.astype(np.int64)
        if cfg.skip_prk_steps:
            # PLMS warms up with a 2-stage step: the second timestep is taken twice
            self.prk_timesteps = np.array([], dtype=np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            # four RK4 steps over the last PNDM_ORDER timesteps, each at t, t - h/2, t - h/2, t - h
            half = num_train // n // 2
            prk = ascending[-PNDM_ORDER:].repeat(2) + np.tile(np.array([0, half]), PNDM_ORDER)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            plms = ascending[:-3][::-1].copy()
        self.plms_timesteps = plms
        steps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        self._host_timesteps = steps.tolist()
        return torch.from_numpy(steps), torch.empty(0)

    def _prepare_steps(self) -> None:
        self._reset_state()

    def _alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One PRK stage while the warm-up lasts, then one PLMS step (`generator` is unused: PNDM is deterministic)."""
        self._start_step(timestep)
        t = self._host_timesteps[self._step_index]
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            prev_sample = self._step_prk(model_output, t, sample)
        else:
            prev_sample = self._step_plms(model_output, t, sample)
        self.counter += 1
        self._step_index += 1
        return self._output(prev_sample, None, return_dict)

    def _step_prk(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """A Runge-Kutta stage (eq. 13): stages at t, t-h/2, t-h/2, t-h combined with weights 1/6, 1/3, 1/3, 1/6."""
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_t = t - (0 if self.counter % 2 else half)
        start_t = int(self.prk_timesteps[self.counter // 4 * 4])
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        return pndm_transfer(
            cur_sample, model_output, self._alpha(start_t), self._alpha(prev_t), self.config.prediction_type
        )

    def _step_plms(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """A linear multistep step (eq. 12): Adams-Bashforth weights on the last 1-4 noise predictions."""
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler: PLMS steps need the 12 Runge-Kutta steps first; call set_timesteps")
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        prev_t = t - ratio
        if self.counter != 1:
            self.ets = [*self.ets[-3:], model_output]
        else:
            prev_t, t = t, t + ratio  # second stage of the warm-up: redo the first step with the averaged eps
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return pndm_transfer(sample, model_output, self._alpha(t), self._alpha(prev_t), self.config.prediction_type)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise at each timestep's value (alpha_bar in the sample dtype)."""
        return vp_add_noise(self.alphas_cumprod, original_samples, noise, timesteps)
