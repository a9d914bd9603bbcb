"""DDIMScheduler: Song et al. (2021), "Denoising Diffusion Implicit Models", eq. 12, with eta-scaled noise.

Parity notes (diffusers 0.42): timesteps are int64 spaced per `timestep_spacing` (`leading` uses num_train // N);
the previous timestep is `t - num_train // N` whatever the spacing; the arithmetic runs in the sample's dtype with
0-dim float32 alpha_bar scalars; `add_noise` casts alpha_bar to the sample dtype first; with zero terminal SNR
alpha_bar at the last timestep stays exactly 0 (no 2**-24 clamp).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sdxl.noise import randn_tensor
from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.dpm_multistep import threshold_sample
from sdxl.schedulers.sigmas import TIMESTEP_SPACINGS, make_betas, rescale_zero_terminal_snr, spaced_timesteps


def reset_vp_schedule(scheduler: Scheduler, zero_snr: bool) -> None:
    """betas / alphas / alphas_cumprod as the DDIM-family schedulers build them: zero SNR only where their config has
    the key (a value carried over from another scheduler's config is ignored), and no clamp of the last alpha_bar."""
    cfg = scheduler.config
    betas = make_betas(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas)
    scheduler.betas = rescale_zero_terminal_snr(betas) if zero_snr else betas
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)


def discrete_timesteps(spacing: str, num_steps: int, num_train_timesteps: int, steps_offset: int) -> np.ndarray:
    """DDIM/DDPM's int64 timesteps (descending): the Lin et al. (2023) spacings, rounded."""
    if num_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_steps} cannot be larger than num_train_timesteps={num_train_timesteps}; "
            "use at most that many steps"
        )
    timesteps = spaced_timesteps(spacing, num_steps, num_train_timesteps, steps_offset)
    return timesteps.round().astype(np.int64)


def vp_add_noise(
    alphas_cumprod: torch.Tensor, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """q(x_t | x_0) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, with alpha_bar in the samples' dtype."""
    alphas_cumprod = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
    timesteps = timesteps.to(original_samples.device)
    shape = (-1,) + (1,) * (original_samples.ndim - 1)  # (B, 1, 1, 1)
    sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().reshape(shape)
    sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().reshape(shape)
    return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise


def vp_get_velocity(
    alphas_cumprod: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
    alphas_cumprod = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
    timesteps = timesteps.to(sample.device)
    shape = (-1,) + (1,) * (sample.ndim - 1)
    sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().reshape(shape)
    sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().reshape(shape)
    return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample


def predict_x0(prediction_type: str, model_output, sample, alpha_prod_t, beta_prod_t):
    """x0 from the model output at alpha_bar_t (DDIM eq. 12's f_theta, DDPM eq. 15), in the sample dtype."""
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    if prediction_type == "sample":
        return model_output
    return (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output  # v_prediction


def predict_x0_eps(prediction_type: str, model_output, sample, alpha_prod_t, beta_prod_t):
    """(x0, eps) from the model output at alpha_bar_t, in the sample dtype."""
    x0 = predict_x0(prediction_type, model_output, sample, alpha_prod_t, beta_prod_t)
    if prediction_type == "epsilon":
        return x0, model_output
    if prediction_type == "sample":
        return x0, (sample - alpha_prod_t ** (0.5) * model_output) / beta_prod_t ** (0.5)
    return x0, (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample  # v_prediction


def bound_x0(config, x0: torch.Tensor) -> torch.Tensor:
    """x0 held to the data range as the config asks: dynamic thresholding, else clipping, else as it is."""
    if config.thresholding:
        return threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if config.clip_sample:
        return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0


@dataclass(frozen=True, eq=False, kw_only=True)
class DDIMSchedulerConfig(SchedulerConfig):
    """diffusers' DDIMScheduler config keys and defaults."""

    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    choices: ClassVar[dict[str, tuple]] = {**SchedulerConfig.choices, "timestep_spacing": TIMESTEP_SPACINGS}
    sigma_schedule_keys: ClassVar[dict[str, str]] = {}  # no sigma schedules (use_karras_sigmas etc. are ignored)


class DDIMScheduler(Scheduler):
    """DDIM: deterministic for eta=0, DDPM-like ancestral noise for eta=1."""

    config_class: ClassVar[type[SchedulerConfig]] = DDIMSchedulerConfig
    order: ClassVar[int] = 1
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False

    def _init_schedule(self) -> None:
        cfg = self.config
        reset_vp_schedule(self, cfg.rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        n = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.arange(0, n)[::-1].copy().astype(np.int64))
        self.sigmas = torch.empty(0)
        self._alpha_prod: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        steps = discrete_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
        )
        self._host_timesteps = steps.tolist()
        return torch.from_numpy(steps.copy()), torch.empty(0)

    def _prepare_steps(self) -> None:
        # (alpha_bar_t, alpha_bar_prev) per step as 0-dim CPU float32 tensors: prev = t - num_train // N (diffusers)
        ratio = self.config.num_train_timesteps // self.num_inference_steps
        self._alpha_prod = []
        for t in self._host_timesteps:
            prev = t - ratio
            prev_alpha = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
            self._alpha_prod.append((self.alphas_cumprod[t], prev_alpha))

    def _index_for_missing_timestep(self, timestep):
        raise ValueError(
            f"timestep {timestep} is not in DDIMScheduler.timesteps; step through scheduler.timesteps after set_timesteps"
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (eq. 12); `eta` scales the noise (0: deterministic DDIM, 1: DDPM's posterior variance)."""
        if isinstance(generator, numbers.Number):
            raise TypeError(
                f"DDIMScheduler.step got {generator!r} in the `generator` position; pass eta as a keyword (eta=...)"
            )
        cfg = self.config
        self._start_step(timestep)
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prod[self._step_index]
        beta_prod_t = 1 - alpha_prod_t
        x0, eps = predict_x0_eps(cfg.prediction_type, model_output, sample, alpha_prod_t, beta_prod_t)
        x0 = bound_x0(cfg, x0)

        # sigma_t of eq. 16: the DDPM posterior std scaled by eta
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** (0.5)
        if use_clipped_model_output:
            eps = (sample - alpha_prod_t ** (0.5) * x0) / beta_prod_t ** (0.5)
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * eps
        prev_sample = alpha_prod_t_prev ** (0.5) * x0 + direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise to DDIMScheduler.step, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise at each timestep's value (alpha_bar in the sample dtype)."""
        return vp_add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target at `timesteps`."""
        return vp_get_velocity(self.alphas_cumprod, sample, noise, timesteps)
