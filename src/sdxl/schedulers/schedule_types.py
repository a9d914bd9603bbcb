"""AUTOMATIC1111's "Schedule type" sigma schedules as pure functions (modules/sd_schedulers.py, webui 1.10).

Each function returns the noise levels of an `n`-step run, largest first, with the final level last (0 for all but
KL Optimal, which ends at sigma_min as A1111's does; DDIM's may hold a different number of steps, as A1111's):
`n + 1` float32 values, computed in float32 where A1111 computes in torch. The model-dependent ones read the
training sigmas (ascending, `training_sigmas(alphas_cumprod)`), A1111's `inner_model.sigmas`; sigma_min and
sigma_max default to their ends. A scheduler runs such a list through `Scheduler.set_schedule_type`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from sdxl.schedulers.sigmas import beta_sigmas, karras_ramp, sigma_to_t

# The SDXL noise levels of NVIDIA's Align Your Steps (Sabour et al. 2024), 10 steps: research.nvidia.com/labs/
# toronto-ai/AlignYourSteps/howto.html; diffusers' AysSchedules["StableDiffusionXLSigmas"] ends them with 0.
AYS_SDXL_SIGMAS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _append_zero(sigmas: torch.Tensor) -> np.ndarray:
    return torch.cat([sigmas.to(torch.float32), torch.zeros(1)]).numpy()


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Noise level at fractional training timesteps, linear in log sigma (k-diffusion DiscreteSchedule.t_to_sigma)."""
    t = t.float()
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _t_range(train: np.ndarray, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """(t of sigma_max, t of sigma_min): k-diffusion's sigma_to_t (999 and 0 for the training range's ends)."""
    start, end = sigma_to_t(np.array([sigma_max, sigma_min], dtype=np.float32), np.log(train))
    return float(start), float(end)


def uniform(n: int, train: np.ndarray) -> np.ndarray:
    """n noise levels at timesteps evenly spaced from the last to 0, then 0 (k-diffusion get_sigmas(n))."""
    t = torch.linspace(len(train) - 1, 0, n)
    return _append_zero(t_to_sigma(t, torch.from_numpy(np.log(train))))


def sgm_uniform(n: int, train: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    """n of n + 1 evenly spaced timesteps between sigma_max's and sigma_min's, then 0 (SGM's discretisation)."""
    start, end = _t_range(train, sigma_min, sigma_max)
    t = torch.linspace(start, end, n + 1)[:-1]
    return _append_zero(t_to_sigma(t, torch.from_numpy(np.log(train))))


def normal(n: int, train: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    """n timesteps evenly spaced from sigma_max's to sigma_min's (both ends included), then 0."""
    start, end = _t_range(train, sigma_min, sigma_max)
    t = torch.linspace(start, end, n)
    return _append_zero(t_to_sigma(t, torch.from_numpy(np.log(train))))


def simple(n: int, train: np.ndarray) -> np.ndarray:
    """Every (len / n)-th training sigma from the top, then 0 (ComfyUI's "simple")."""
    step = len(train) / n
    picked = [float(train[-(1 + int(x * step))]) for x in range(n)]
    return np.array([*picked, 0.0], dtype=np.float32)


def ddim_uniform(n: int, train: np.ndarray) -> np.ndarray:
    """Training sigmas 1, 1 + k, 1 + 2k, ... (k = len // n) from the top down, then 0: may hold more than n steps."""
    step = max(len(train) // n, 1)
    picked = [float(train[x]) for x in range(1, len(train), step)][::-1]
    return np.array([*picked, 0.0], dtype=np.float32)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5 (k-diffusion get_sigmas_karras), then 0."""
    return _append_zero(karras_ramp(torch.linspace(0, 1, n), sigma_min, sigma_max, rho))


def exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Evenly spaced in log sigma (k-diffusion get_sigmas_exponential), then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    """Polynomial in log sigma (k-diffusion get_sigmas_polyexponential; rho = 1 is exponential), then 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """n + 1 levels evenly spaced in arctan(sigma) from sigma_max to sigma_min (the KL-optimal schedule of Sabour et al. 2024, arXiv:2404.14507),
    ending at sigma_min (no 0), as A1111's."""
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    i = torch.arange(n + 1)
    return torch.tan(i / n * alpha_min + (1.0 - i / n) * alpha_max).numpy()


def align_your_steps(n: int) -> np.ndarray:
    """NVIDIA's SDXL schedule: the 11 published levels for 10 steps, log-linearly interpolated to n + 1 for other
    counts (their how-to), the last set to 0 (as diffusers' AysSchedules and ComfyUI)."""
    published = np.array(AYS_SDXL_SIGMAS)
    if n + 1 == len(published):
        sigmas = published.copy()
    else:
        xs = np.linspace(0, 1, len(published))
        sigmas = np.exp(np.interp(np.linspace(0, 1, n + 1), xs, np.log(published[::-1])))[::-1].copy()
    sigmas[-1] = 0.0
    return sigmas.astype(np.float32)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Sigmas at Beta(0.6, 0.6) quantiles (Lee et al. 2024; A1111's default alpha and beta), then 0."""
    return np.concatenate([beta_sigmas(sigma_min, sigma_max, n, alpha, b), [0.0]]).astype(np.float32)


# name (A1111's `name` in /sdapi/v1/schedulers) -> (function, what it reads). "automatic" is not here: it means
# the scheduler's own schedule.
_NEEDS_TRAIN = {"uniform", "simple", "ddim"}
SCHEDULE_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
    "kl_optimal": kl_optimal,
    "align_your_steps": align_your_steps,
    "simple": simple,
    "normal": normal,
    "ddim": ddim_uniform,
    "beta": beta,
}
RHO_SCHEDULES = {"karras": 7.0, "polyexponential": 1.0}  # the schedules that take rho, with A1111's defaults


def schedule_sigmas(name: str, n: int, train: np.ndarray, rho: float | None = None) -> np.ndarray:
    """The `name` schedule for `n` steps over the ascending training sigmas `train` (float32, final level last)."""
    fn = SCHEDULE_FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown schedule type {name!r}; choose one of {['automatic', *SCHEDULE_FUNCTIONS]}")
    if rho is not None and name not in RHO_SCHEDULES:
        raise ValueError(f"schedule type {name!r} takes no rho; only {sorted(RHO_SCHEDULES)} do")
    sigma_min, sigma_max = float(train[0]), float(train[-1])
    if name in _NEEDS_TRAIN:
        return fn(n, train)
    if name in ("sgm_uniform", "normal"):
        return fn(n, train, sigma_min, sigma_max)
    if name == "align_your_steps":
        return fn(n)
    if name in RHO_SCHEDULES:
        return fn(n, sigma_min, sigma_max, RHO_SCHEDULES[name] if rho is None else rho)
    return fn(n, sigma_min, sigma_max)
