"""DPMSolverSDEScheduler: k-diffusion's sample_dpmpp_sde (DPM-Solver++ SDE, r = 1/2) with Brownian-tree noise.

Noise comes from a Brownian motion on [sigma_min, sigma_max] sampled lazily as a binary tree of intervals, so the
noise between two sigmas does not depend on the step count's path through them. `BrownianInterval` below
reproduces torchsde 0.2.6's `BrownianInterval(halfway_tree=True, tol=1e-6, pool_size=24)` draw for draw (numpy
SeedSequence seeds per tree node, a torch generator per draw, on the sample's device and dtype), so a seed gives
diffusers' image without torchsde. `noise_sampler_seed=None` draws the tree's entropy from torch's global RNG,
as diffusers does.
Parity notes (diffusers 0.42): timesteps are float64; second passes sit at the log-midpoints' timesteps; no fp32
upcast in `step`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from sdxl.schedulers.base import Scheduler, SchedulerConfig, SchedulerOutput
from sdxl.schedulers.euler import euler_denoised
from sdxl.schedulers.heun import DiscreteSigmaConfig, discrete_schedule, final_sigma, repeat_inner, steps_of
from sdxl.schedulers.k_family import SigmaSchedulerMixin, input_scales
from sdxl.schedulers.sigmas import sigma_to_t


@dataclass(frozen=True, eq=False, kw_only=True)
class DPMSolverSDESchedulerConfig(DiscreteSigmaConfig):
    """diffusers' DPMSolverSDEScheduler config keys and defaults."""

    noise_sampler_seed: int | None = None

    choices: ClassVar[dict[str, tuple]] = {
        **DiscreteSigmaConfig.choices,
        "prediction_type": ("epsilon", "v_prediction"),
    }


class BrownianInterval:
    """A Brownian motion W on [t0, t1], queried by increments W(tb) - W(ta) (torchsde's halfway-tree interval).

    Each tree node [s, e] splits at its rounded midpoint m; the left child's increment is the Brownian-bridge
    sample (m - s) / (e - s) * W + sqrt((m - s)(e - m) / (e - s)) * Z, Z drawn from a generator seeded by the
    node's numpy SeedSequence(entropy, spawn_key=(key, depth)). Increments are cached in a 45-entry LRU.
    """

    def __init__(
        self, t0: float, t1: float, size, dtype, device, entropy: int, tol: float = 1e-6, pool_size: int = 24
    ) -> None:
        self.size, self.dtype, self.device = tuple(size), dtype, torch.device(device)
        self.entropy, self.pool_size = int(entropy), pool_size
        self.ndigits = -int(math.log10(tol))
        self.start, self.end = self._round(t0), self._round(t1)
        # node (start, end) -> (midway, key, depth, W seed); the root has key 0, depth 0
        self._splits: dict[tuple[float, float], tuple[float, int, int, int]] = {}
        self._parents: dict[tuple[float, float], tuple[tuple[float, float], bool]] = {}
        self._keys: dict[tuple[float, float], tuple[int, int]] = {(self.start, self.end): (0, 0)}
        self._cache: OrderedDict = OrderedDict()
        w_seed = np.random.SeedSequence(entropy=self.entropy, pool_size=pool_size).generate_state(3)[0]
        self._root_w = self._randn(w_seed) * math.sqrt(t1 - t0)

    def _round(self, x: float) -> float:
        return round(x, self.ndigits)

    def _randn(self, seed) -> torch.Tensor:
        generator = torch.Generator(self.device).manual_seed(int(seed))
        return torch.randn(self.size, dtype=self.dtype, device=self.device, generator=generator)

    def _split_exact(self, node: tuple[float, float], midway: float) -> None:
        key, depth = self._keys[node]
        midway_r = self._round(midway)
        seed = np.random.SeedSequence(
            entropy=self.entropy, spawn_key=(key, depth), pool_size=self.pool_size
        ).generate_state(4)[0]
        left, right = (node[0], self._round(midway)), (self._round(midway), node[1])
        self._splits[node] = (midway_r, key, depth, seed)
        for child, is_left in ((left, True), (right, False)):
            self._parents[child] = (node, is_left)
            self._keys[child] = (2 * key + (0 if is_left else 1), depth + 1)

    def _split(self, node: tuple[float, float], target: float) -> None:
        # halfway tree: split at the midpoint, then keep splitting the child that holds `target`
        while True:
            self._split_exact(node, 0.5 * (node[1] + node[0]))
            midway = self._splits[node][0]
            if target > midway:
                node = (midway, node[1])
            elif target < midway:
                node = (node[0], midway)
            else:
                return

    def _locate(self, ta: float, tb: float) -> list[tuple[float, float]]:
        """The tree nodes whose union is [ta, tb], left to right (splitting nodes as needed)."""
        out, stack = [], [((self.start, self.end), ta, tb)]
        while stack:
            node, a, b = stack.pop()
            if a == node[0] and b == node[1]:
                out.append(node)
                continue
            if node not in self._splits:
                self._split(node, b if a == node[0] else a)
            midway = self._splits[node][0]
            if b <= midway:
                stack.append(((node[0], midway), a, b))
            elif a >= midway:
                stack.append(((midway, node[1]), a, b))
            else:
                stack.append(((midway, node[1]), midway, b))
                stack.append(((node[0], midway), a, midway))
        return out

    def _increment(self, node: tuple[float, float]) -> torch.Tensor:
        if node == (self.start, self.end):
            return self._root_w
        if node in self._cache:
            self._cache.move_to_end(node)
            return self._cache[node]
        parent, is_left = self._parents[node]
        w = self._increment(parent)
        midway, _, _, seed = self._splits[parent]
        h_reciprocal = 1 / (parent[1] - parent[0])
        left_diff, right_diff = midway - parent[0], parent[1] - midway
        mean = left_diff * w * h_reciprocal
        left_w = mean + math.sqrt(left_diff * right_diff * h_reciprocal) * self._randn(seed)
        out = left_w if is_left else w - left_w
        if len(self._cache) >= 45:
            self._cache.popitem(last=False)
        self._cache[node] = out
        return out

    def __call__(self, ta: float, tb: float) -> torch.Tensor:
        """W(tb) - W(ta) for start <= ta <= tb <= end (values outside are clamped, as torchsde does)."""
        ta, tb = min(max(ta, self.start), self.end), min(max(tb, self.start), self.end)
        if ta == tb:
            return torch.zeros(self.size, dtype=self.dtype, device=self.device)
        nodes = self._locate(self._round(ta), self._round(tb))
        w = self._increment(nodes[0])
        for node in nodes[1:]:
            w = w + self._increment(node)
        return w


class _Pass(NamedTuple):
    """Per-pass scalars (0-dim float32 CPU tensors, floats for the tree query)."""

    final: bool  # sigma_next == 0: a plain Euler step to zero
    sigma: torch.Tensor
    sigma_input: torch.Tensor
    sample_ratio: torch.Tensor
    denoised_coeff: torch.Tensor
    sigma_up: torch.Tensor
    query: tuple[float, float]  # sorted (ta, tb) of the tree query
    sign: float  # -1.0 when the query runs backwards in sigma (always, for a decreasing schedule)
    noise_scale: torch.Tensor  # sqrt(|t1 - t0|) of the query
    mid_point_sigma: torch.Tensor
    dt: torch.Tensor


def _sde_pass(sigma: torch.Tensor, sigma_next: torch.Tensor, first: bool) -> _Pass:
    """The DPM-Solver++(2S) SDE half-step from sigma towards sigma_next (k-diffusion sample_dpmpp_sde, r = 1/2)."""
    t, t_next = sigma.log().neg(), sigma_next.log().neg()
    t_proposed = t + (t_next - t) * 0.5
    mid = t_proposed.neg().exp()
    sigma_input = sigma if first else mid
    target_t = t_proposed if first else t_next
    sigma_from, sigma_to = t.neg().exp(), target_t.neg().exp()
    up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = up if float(up) < float(sigma_to) else sigma_to  # Python min(sigma_to, up), as diffusers
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    ancestral_t = sigma_down.log().neg()
    a, b = float(sigma_from), float(sigma_to)
    query, sign = ((a, b), 1.0) if a < b else ((b, a), -1.0)
    return _Pass(
        final=float(sigma_next) == 0.0,
        sigma=sigma,
        sigma_input=sigma_input,
        sample_ratio=ancestral_t.neg().exp() / t.neg().exp(),
        denoised_coeff=(t - ancestral_t).expm1(),
        sigma_up=sigma_up,
        query=query,
        sign=sign,
        noise_scale=(sigma_to - sigma_from).abs().sqrt(),
        mid_point_sigma=mid,
        dt=sigma_next - sigma,
    )


class DPMSolverSDEScheduler(SigmaSchedulerMixin, Scheduler):
    """DPM++ SDE ("DPM++ SDE"): two model calls per step, Brownian-tree noise seeded by `noise_sampler_seed`."""

    config_class: ClassVar[type[SchedulerConfig]] = DPMSolverSDESchedulerConfig
    order: ClassVar[int] = 2
    supports_custom_timesteps: ClassVar[bool] = False
    supports_custom_sigmas: ClassVar[bool] = False
    supports_schedule_types: ClassVar[bool] = True

    def _init_schedule(self) -> None:
        self.timesteps, self.sigmas = self._schedule(self.config.num_train_timesteps, None, None)
        self._prepare_steps()

    def _schedule(self, num_inference_steps, timesteps, sigmas):
        self.num_inference_steps = steps_of(num_inference_steps, None, sigmas)
        final = final_sigma(sigmas)
        timesteps, sigmas, log_sigmas = discrete_schedule(
            self.config,
            self.alphas_cumprod,
            self.num_inference_steps,
            float32_timesteps=False,
            karras_config_range=False,
            custom=sigmas,
        )
        # second passes: the timesteps of the log-sigma midpoints
        t = -np.log(sigmas)
        midpoints = sigma_to_t(np.exp(-(t[:-1] + np.diff(t) * 0.5)), log_sigmas)
        timesteps = repeat_inner(torch.from_numpy(np.asarray(timesteps, dtype=np.float64)), tail=0)
        timesteps[1::2] = torch.from_numpy(midpoints)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
        return timesteps, repeat_inner(sigmas)

    def _prepare_steps(self) -> None:
        self._passes: dict[tuple[int, bool], _Pass] | None = None  # built on the first step (host math, once)
        self._first_scale = input_scales(self.sigmas)
        self.sample = None
        self.mid_point_sigma = None
        self._mid_scale = None
        self.noise_sampler = None
        self._min_max = (float(self.sigmas[self.sigmas > 0].min()), float(self.sigmas.max()))

    @property
    def state_in_first_order(self) -> bool:
        """True on the first pass of a step, False on the midpoint pass."""
        return self.sample is None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) at this pass's sigma (the midpoint sigma on the second pass)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        if self.state_in_first_order:
            return sample / self._first_scale[self._step_index]
        return sample / self._mid_scale

    def _build_passes(self) -> dict[tuple[int, bool], _Pass]:
        # both passes of every step index, since which one runs depends on where a run starts
        s, n = self.sigmas.unbind(), len(self.timesteps)
        predictor = {(i, True): _sde_pass(s[i], s[i + 1], True) for i in range(n)}
        return predictor | {(i, False): _sde_pass(s[i - 1], s[i], False) for i in range(1, n)}

    def _make_noise_sampler(self, sample: torch.Tensor) -> BrownianInterval:
        seed = self.config.noise_sampler_seed
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()  # diffusers' draw from the global RNG
        sigma_min, sigma_max = self._min_max
        return BrownianInterval(sigma_min, sigma_max, sample.shape, sample.dtype, sample.device, seed)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        s_noise: float = 1.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One pass of DPM++ SDE; `generator` is unused (the Brownian tree is seeded by `noise_sampler_seed`)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            self.noise_sampler = self._make_noise_sampler(sample)
        if self._passes is None:
            self._passes = self._build_passes()
        first = self.state_in_first_order
        p = self._passes[(self._step_index, first)]
        denoised = euler_denoised(self.config.prediction_type, model_output, sample, p.sigma_input, p.sigma_input)
        if p.final:
            prev_sample = sample + (sample - denoised) / p.sigma * p.dt
        else:
            if not first:
                sample = self.sample
            prev_sample = p.sample_ratio * sample - p.denoised_coeff * denoised
            noise = self.noise_sampler(*p.query) * p.sign / p.noise_scale
            prev_sample = prev_sample + noise * s_noise * p.sigma_up
            if first:
                self.sample, self.mid_point_sigma = sample, p.mid_point_sigma
                self._mid_scale = (p.mid_point_sigma**2 + 1) ** 0.5
            else:
                self.sample = self.mid_point_sigma = self._mid_scale = None
        self._step_index += 1
        return self._output(prev_sample, denoised, return_dict)
