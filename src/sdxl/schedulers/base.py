"""The scheduler foundation: the shared diffusers-style API over a frozen config (config.py), found by name (registry.py).

A scheduler subclass declares its config dataclass (field names = diffusers' `__init__` keys, same defaults) and
implements `_schedule` (timesteps and sigmas for `set_timesteps`), `step` and `add_noise`; everything else —
construction from kwargs or from any scheduler's config, `set_timesteps` argument checks, step-index bookkeeping
for img2img / refiner hand-off, `compatibles`, saving the config — lives here once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from sdxl.schedulers import registry
from sdxl.schedulers.config import SchedulerConfig
from sdxl.schedulers.registry import KARRAS_SCHEDULERS, register_scheduler_module, scheduler_class
from sdxl.schedulers.schedule_types import schedule_sigmas
from sdxl.schedulers.sigmas import make_alphas_cumprod, make_betas, rescale_zero_terminal_snr, training_sigmas

logger = logging.getLogger(__name__)

__all__ = [
    "KARRAS_SCHEDULERS", "Scheduler", "SchedulerConfig", "SchedulerOutput", "register_scheduler_module", "scheduler_class",
]

@dataclass
class SchedulerOutput:
    """What `step` returns: the next sample and, where diffusers gives it, the predicted clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def __getitem__(self, key: int | str) -> torch.Tensor:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


class Scheduler:
    """Base of every scheduler: diffusers' scheduler API over a frozen `SchedulerConfig`.

    Subclasses set `config_class` and implement `_init_schedule`, `_schedule`, `step` and `add_noise` (and
    `scale_model_input` when they scale). They keep per-step scalars in lists filled by `_prepare_steps` when
    `set_timesteps` runs, so `step` and `scale_model_input` never synchronise with the device; per-step
    scalars stay 0-dim CPU float32 tensors so mixed-precision arithmetic rounds exactly as in diffusers.
    """

    config_class: ClassVar[type[SchedulerConfig]] = SchedulerConfig
    config_name: ClassVar[str] = "scheduler_config.json"
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0  # standard deviation of the initial noise (a property where it depends on sigmas)
    _compatibles: ClassVar[list[str]] = list(KARRAS_SCHEDULERS)
    has_compatibles: ClassVar[bool] = True
    supports_custom_timesteps: ClassVar[bool] = True
    supports_custom_sigmas: ClassVar[bool] = True
    min_custom_sigmas: ClassVar[int] = 2
    supports_schedule_types: ClassVar[bool] = False  # True for the k-diffusion samplers (set_schedule_type)
    custom_sigmas_meaning: ClassVar[str] = "the noise levels, the last one the final sigma"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        registry.CLASSES[cls.__name__] = cls

    def __init__(self, config: SchedulerConfig | None = None, /, **kwargs: Any) -> None:
        if config is None:
            config = self.config_class.from_kwargs(kwargs)
        elif kwargs:
            raise TypeError(f"pass either a config or config keys to {type(self).__name__}, not both")
        elif not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}; "
                f"use {type(self).__name__}.from_config(config) for a mapping or another scheduler's config"
            )
        self._config = config
        self._init_betas()
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor
        self.sigmas: torch.Tensor
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._schedule_type: tuple[str, float | None] | None = None
        self._init_schedule()

    def _init_betas(self) -> None:
        """betas, alphas and alphas_cumprod of the training schedule (the EDM schedulers have none)."""
        config = self._config
        betas = make_betas(
            config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end, config.trained_betas
        )
        zero_snr = bool(getattr(config, "rescale_betas_zero_snr", False))
        self.betas = rescale_zero_terminal_snr(betas) if zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = make_alphas_cumprod(self.betas, zero_snr)

    # --- config ---

    @property
    def config(self) -> SchedulerConfig:
        """The frozen config: attributes and a read-only mapping with diffusers' keys."""
        return self._config

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], return_unused_kwargs: bool = False, **overrides: Any
    ) -> Scheduler | tuple[Scheduler, dict[str, Any]]:
        """Build from any scheduler's config (ours, diffusers' `scheduler.config`, or a dict), as diffusers does.

        Keys of other schedulers are ignored (and kept, hidden, in the new config); `overrides` replace config
        values; a supported key with an unsupported value is a ValueError.
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_config takes a config mapping (e.g. `pipe.scheduler.config`), got "
                f"{type(config).__name__}; use from_pretrained for a folder"
            )
        new_config, unused = cls.config_class.from_mapping(config, overrides, class_name=cls.__name__)
        if unused:
            logger.warning("%s.from_config ignores keys it does not have: %s", cls.__name__, sorted(unused))
        scheduler = cls(new_config)
        return (scheduler, unused) if return_unused_kwargs else scheduler

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, subfolder: str | None = None, **overrides: Any) -> Scheduler:
        """Build from a local `scheduler_config.json` (in `folder`, or `folder/subfolder`)."""
        path = os.path.join(folder, subfolder or "", cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no {cls.config_name} at {path}; pass the folder that holds it (or its parent and subfolder)"
            )
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f), **overrides)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `scheduler_config.json` as diffusers does (with `_class_name`)."""
        os.makedirs(folder, exist_ok=True)
        data = {**self.config.to_json_dict(), "_class_name": type(self).__name__}
        with open(os.path.join(folder, self.config_name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    @property
    def compatibles(self) -> list[type[Scheduler]]:
        """The scheduler classes that can be built from this one's config (those this package implements)."""
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls) -> list[type[Scheduler]]:
        found = []
        for name in dict.fromkeys([cls.__name__, *cls._compatibles]):
            try:
                found.append(scheduler_class(name))
            except ValueError:
                continue  # not implemented here (yet)
        return found

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.config.to_json_dict(), indent=2, sort_keys=True)}"

    # --- schedule ---

    def _init_schedule(self) -> None:
        """Set `timesteps` and `sigmas` to the training schedule (before any `set_timesteps`)."""
        raise NotImplementedError

    def _schedule(
        self, num_inference_steps: int | None, timesteps: np.ndarray | None, sigmas: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) on the CPU for exactly one of the three arguments; sets `num_inference_steps`."""
        raise NotImplementedError

    def _prepare_steps(self) -> None:
        """Precompute per-step scalars after a new schedule (so `step` stays free of host-device syncs)."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Set the inference schedule: `num_inference_steps` spaced per config, or custom `timesteps` or `sigmas`."""
        name = type(self).__name__
        given = [
            k
            for k, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{name}.set_timesteps needs exactly one of num_inference_steps, timesteps, sigmas; got {given}"
            )
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if timesteps is not None:
            if not self.supports_custom_timesteps:
                raise ValueError(f"{name} does not support custom timesteps; pass num_inference_steps")
            if self.config.sigma_schedule is not None:
                key = next(k for k, v in self.config.sigma_schedule_keys.items() if v == self.config.sigma_schedule)
                raise ValueError(f"{name}: custom timesteps cannot be used with {key}=True")
            timesteps = np.asarray(timesteps)
            if timesteps.ndim != 1 or len(timesteps) < 1:
                raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {timesteps.shape}")
        if sigmas is not None:
            if not self.supports_custom_sigmas:
                raise ValueError(f"{name} does not support custom sigmas; pass num_inference_steps or timesteps")
            sigmas = np.asarray(sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas)
            if sigmas.ndim != 1 or len(sigmas) < self.min_custom_sigmas:
                raise ValueError(
                    f"sigmas must be a 1-D sequence of at least {self.min_custom_sigmas} values "
                    f"({self.custom_sigmas_meaning}), got shape {sigmas.shape}"
                )
        if num_inference_steps is not None:
            num_inference_steps = int(num_inference_steps)
            if self._schedule_type is not None:
                name, rho = self._schedule_type
                sigmas = schedule_sigmas(name, num_inference_steps, training_sigmas(self.alphas_cumprod).numpy(), rho)
                num_inference_steps = None
        schedule_timesteps, schedule_sigmas_ = self._schedule(num_inference_steps, timesteps, sigmas)
        self.timesteps = schedule_timesteps.to(device=device)
        self.sigmas = schedule_sigmas_.to("cpu")  # per-step scalars stay on the host, as in diffusers
        self._step_index = None
        self._begin_index = None
        self._prepare_steps()

    # --- AUTOMATIC1111's schedule types ---

    @property
    def schedule_type(self) -> str | None:
        """The A1111 schedule type `set_timesteps(n)` uses (schedule_types.py), or None for the config's own."""
        return None if self._schedule_type is None else self._schedule_type[0]

    def set_schedule_type(self, name: str | None, rho: float | None = None) -> None:
        """Use AUTOMATIC1111's schedule type `name` ("karras", "align_your_steps", ... as /sdapi/v1/schedulers
        names them; None or "automatic" for the config's own schedule) for every later `set_timesteps(n)`:
        the noise levels come from that schedule over the training sigmas and run through this scheduler's own
        custom-sigma path. `rho` overrides the default of karras (7) and polyexponential (1). Only the
        k-diffusion samplers take schedule types; custom `timesteps`/`sigmas` still win when passed."""
        if name is None or name == "automatic":
            self._schedule_type = None
            return
        if not self.supports_schedule_types:
            raise ValueError(
                f"{type(self).__name__} takes no schedule type ({name!r}): schedule types apply to the k-diffusion "
                "samplers (Euler, Euler a, Heun, LMS, DPM2, DPM2 a, DPM++ 2M/SDE/2S); use 'automatic' here"
            )
        schedule_sigmas(name, 2, training_sigmas(self.alphas_cumprod).numpy(), rho)  # a bad name or rho fails now
        self._schedule_type = (name, rho)

    # --- step index (img2img and refiner start mid-schedule) ---

    @property
    def step_index(self) -> int | None:
        """Index of the current step in `timesteps`; advances by one per `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index, set by the pipeline with `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at `timesteps[begin_index]` (pipelines call this after `set_timesteps` for img2img / denoising_start)."""
        self._begin_index = begin_index

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """Index of `timestep` in the schedule; the second match when it occurs twice (so a mid-schedule start skips no sigma)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            return self._index_for_missing_timestep(timestep)
        return int(indices[1 if len(indices) > 1 else 0].item())

    def _index_for_missing_timestep(self, timestep: float | torch.Tensor) -> int:
        raise ValueError(f"timestep {timestep} is not in {type(self).__name__}.timesteps; pass one of them")

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        """Find the starting index once (the only host-device sync of a run, as in diffusers)."""
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        self._step_index = self.index_for_timestep(timestep)

    def _start_step(self, timestep: float | torch.Tensor) -> None:
        """Refuse a `step` before `set_timesteps`; on the first step, find the starting index."""
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.step called before set_timesteps; call set_timesteps first")
        if self._step_index is None:
            self._init_step_index(timestep)

    def _add_noise_indices(self, timesteps: torch.Tensor, schedule_timesteps: torch.Tensor) -> list[int]:
        """Step indices for `add_noise`: looked up per timestep, or the begin/current index once a run has one."""
        if self._begin_index is None:
            return [self.index_for_timestep(t, schedule_timesteps) for t in timesteps]
        if self._step_index is not None:
            return [self._step_index] * timesteps.shape[0]  # after the first step (inpainting)
        return [self._begin_index] * timesteps.shape[0]  # before the first step (img2img)

    # --- the denoising API ---

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The UNet input for this step (identity unless the scheduler scales by sigma)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One solver step from `sample` at `timestep` given the model's output; returns the previous sample."""
        raise NotImplementedError

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to the level of `timesteps` (img2img start, inpaint mask blending)."""
        raise NotImplementedError

    @staticmethod
    def _output(prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None, return_dict: bool):
        out = SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
        return out if return_dict else out.to_tuple()
