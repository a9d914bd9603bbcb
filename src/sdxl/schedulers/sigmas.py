"""Pure noise-schedule math: betas, alphas_cumprod, timestep spacing, sigma schedules, sigma <-> t.

Nothing here holds state. Every function mirrors the arithmetic (operation order and dtypes) of the
diffusers 0.42 scheduler code it names, so schedules built from it agree bit for bit with the reference;
schedulers choose dtypes and rounding themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SIGMA_SCHEDULES = ("karras", "exponential", "beta")


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise the squared-cosine alpha_bar of Nichol & Dhariwal (2021), eq. 17 (diffusers betas_for_alpha_bar)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: Sequence[float] | None = None,
) -> torch.Tensor:
    """The training betas (float32): `trained_betas` if given, else the named schedule."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        # the latent-diffusion schedule: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas to zero terminal SNR: Lin et al. (2023), "Common Diffusion Noise Schedules...", Algorithm 1."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def make_alphas_cumprod(betas: torch.Tensor, zero_terminal_snr: bool = False) -> torch.Tensor:
    """alpha_bar_t = prod(1 - beta); with zero terminal SNR the last one is 2**-24 so the first sigma stays finite."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        alphas_cumprod[-1] = 2**-24  # fp16's smallest subnormal, as diffusers
    return alphas_cumprod


def training_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The VE noise level of every training timestep: sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), ascending in t."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def spaced_timesteps(
    spacing: str,
    num_steps: int,
    num_train_timesteps: int,
    steps_offset: int = 0,
    *,
    last_timestep: int | None = None,
    multistep: bool = False,
) -> np.ndarray:
    """Descending float64 timesteps: Table 2 of Lin et al. (2023); callers round and cast as their scheduler does.

    `multistep=True` is the spacing of diffusers' multistep solvers (DPM-Solver, UniPC, DEIS): `num_steps + 1`
    points of which the last is dropped, so `leading` uses `last_timestep // (num_steps + 1)`.
    `last_timestep` (default `num_train_timesteps`) is lowered by `lambda_min_clipped` in those solvers.
    """
    last = num_train_timesteps if last_timestep is None else last_timestep
    points = num_steps + 1 if multistep else num_steps
    if spacing == "linspace":
        timesteps = np.linspace(0, last - 1, points)[::-1]
    elif spacing == "leading":
        timesteps = (np.arange(0, points) * (last // points)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        # the step is num_train / num_steps in both variants (diffusers)
        return np.arange(last, 0, -num_train_timesteps / num_steps).round() - 1
    else:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {TIMESTEP_SPACINGS}")
    return (timesteps[:-1] if multistep else timesteps).copy()


def interp_sigmas(timesteps: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """Sigmas at (possibly fractional) timesteps by linear interpolation of the training sigmas (float64)."""
    return np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)


def log_linear_sigmas(train_sigmas: np.ndarray, num_points: int) -> np.ndarray:
    """`num_points` sigmas evenly spaced in log sigma from the largest to the smallest training sigma (float32)."""
    start, end = np.log(train_sigmas[-1]), np.log(train_sigmas[0])
    return torch.linspace(float(start), float(end), num_points).exp().numpy()


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5, as k-diffusion get_sigmas_karras (without the appended zero)."""
    return karras_ramp(np.linspace(0, 1, num_steps), sigma_min, sigma_max, rho)


def karras_ramp(ramp, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """Karras et al. (2022) eq. 5 at ramp positions in [0, 1] (0 -> sigma_max), in the ramp's type and dtype."""
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """Sigmas evenly spaced in log sigma, as k-diffusion get_sigmas_exponential (without the appended zero)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def lu_lambdas(lambda_min: float, lambda_max: float, num_steps: int) -> np.ndarray:
    """Log-SNR values evenly spaced from lambda_max to lambda_min: Lu et al. (2022), DPM-Solver++ (rho = 1)."""
    return karras_sigmas(lambda_min, lambda_max, num_steps, rho=1.0)


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """Sigmas at the Beta(alpha, beta) quantiles: Lee et al. (2024), "Beta Sampling is All You Need"."""
    quantiles = beta_ppf(1 - np.linspace(0, 1, num_steps), alpha, beta)
    return sigma_min + quantiles * (sigma_max - sigma_min)


def resample_sigmas(kind: str, sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """`num_steps` descending sigmas of the named schedule between sigma_max and sigma_min (float64)."""
    if kind == "karras":
        return karras_sigmas(sigma_min, sigma_max, num_steps)
    if kind == "exponential":
        return exponential_sigmas(sigma_min, sigma_max, num_steps)
    if kind == "beta":
        return beta_sigmas(sigma_min, sigma_max, num_steps)
    raise ValueError(f"sigma schedule {kind!r} is not supported; choose one of {SIGMA_SCHEDULES}")


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps of `sigmas` by interpolation in log sigma (k-diffusion DiscreteSchedule.sigma_to_t)."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (num_train, len(sigmas))
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigmas.shape)


def sigma_to_alpha_sigma_t(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VE sigma -> VP (alpha_t, sigma_t): alpha_t = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


# --- the Beta distribution's quantile function, so beta sigmas need no scipy ---


def _betainc(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes 6.4), for x in (0, 1)."""
    log_front = a * np.log(x) + b * np.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + numerator / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = c * d
            h = h * delta
        if np.all(np.abs(delta - 1) < 1e-15):
            break
    return np.exp(log_front) * h / a


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """I_x(a, b) for x in (0, 1), by symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    out = np.empty_like(x)
    direct = x < (a + 1) / (a + b + 2)
    out[direct] = _betainc(x[direct], a, b)
    out[~direct] = 1 - _betainc(1 - x[~direct], b, a)
    return out


def beta_ppf(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """Quantiles of Beta(a, b) by bisection on the CDF to double precision (scipy.stats.beta.ppf)."""
    q = np.asarray(q, dtype=np.float64)
    out = np.where(q >= 1, 1.0, 0.0)
    inner = (q > 0) & (q < 1)
    lo, hi = np.zeros(int(inner.sum())), np.ones(int(inner.sum()))
    with np.errstate(divide="ignore"):  # a midpoint may round to exactly 1
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            below = _beta_cdf(mid, a, b) < q[inner]
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    out[inner] = 0.5 * (lo + hi)
    return out
