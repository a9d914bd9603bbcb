"""DPM-Solver's multistep update formulas, pure functions in VP terms: a noise level as (alpha, sigma, lambda), the
first/second/third-order updates of DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), ODE and SDE, and
diffusers' rule for the order of each step. Shared by the DPM-Solver family: multistep (VP and EDM), singlestep, DEIS
and UniPC.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sdxl.schedulers.config import ConfigMapping
from sdxl.schedulers.sigmas import sigma_to_alpha_sigma_t


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


def multistep_order(cfg: ConfigMapping, i: int, n: int, lower_order_nums: int) -> int:
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
    cfg: ConfigMapping, order: int, x: torch.Tensor, outs: list, points: list[VPPoint], i: int, noise=None
) -> torch.Tensor:
    """x at points[i + 1] from x at points[i] and the last `order` converted model outputs `outs`."""
    algorithm, t = cfg.algorithm_type, points[i + 1]
    if order == 1:
        return first_order_update(algorithm, x, outs[-1], t, points[i], noise)
    if order == 2:
        return second_order_update(
            algorithm, cfg.solver_type, x, outs[-1], outs[-2], t, points[i], points[i - 1], noise
        )
    return third_order_update(
        algorithm, x, outs[-1], outs[-2], outs[-3], t, points[i], points[i - 1], points[i - 2], noise
    )
