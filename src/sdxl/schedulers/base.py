"""The scheduler foundation: a frozen config with diffusers' keys, the shared diffusers-style API, a class registry.

A scheduler subclass declares its config dataclass (field names = diffusers' `__init__` keys, same defaults) and
implements `_schedule` (timesteps and sigmas for `set_timesteps`), `step` and `add_noise`; everything else —
construction from kwargs or from any scheduler's config, `set_timesteps` argument checks, step-index bookkeeping
for img2img / refiner hand-off, `compatibles`, saving the config — lives here once.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from sdxl.schedulers.sigmas import BETA_SCHEDULES, make_alphas_cumprod, make_betas, rescale_zero_terminal_snr

logger = logging.getLogger(__name__)

# diffusers' KarrasDiffusionSchedulers, in its order: what `compatibles` lists for every sampler below.
KARRAS_SCHEDULERS: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)

# class name -> module that defines it; imported on first lookup. Scheduler modules add themselves here
# (register_scheduler_module) so `compatibles` and `scheduler_class` can find them without importing all.
_MODULES: dict[str, str] = {
    "EulerDiscreteScheduler": "sdxl.schedulers.euler",
    "DPMSolverMultistepScheduler": "sdxl.schedulers.dpm_multistep",
    "DDIMScheduler": "sdxl.schedulers.ddim",
    "DDPMScheduler": "sdxl.schedulers.ddpm",
    "PNDMScheduler": "sdxl.schedulers.pndm",
    "DPMSolverSinglestepScheduler": "sdxl.schedulers.dpm_singlestep",
    "DEISMultistepScheduler": "sdxl.schedulers.deis",
    "UniPCMultistepScheduler": "sdxl.schedulers.unipc",
    "EulerAncestralDiscreteScheduler": "sdxl.schedulers.euler_ancestral",
    "HeunDiscreteScheduler": "sdxl.schedulers.heun",
    "KDPM2DiscreteScheduler": "sdxl.schedulers.kdpm2",
    "KDPM2AncestralDiscreteScheduler": "sdxl.schedulers.kdpm2",
    "LMSDiscreteScheduler": "sdxl.schedulers.lms",
    "DPMSolverSDEScheduler": "sdxl.schedulers.dpm_sde",
}
_CLASSES: dict[str, type[Scheduler]] = {}  # filled by Scheduler.__init_subclass__


def register_scheduler_module(name: str, module: str) -> None:
    """Make scheduler class `name`, defined in `module`, findable by `scheduler_class` and `compatibles`."""
    _MODULES[name] = module


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class called `name` (diffusers' class name), importing its module if needed."""
    if name not in _CLASSES and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _CLASSES:
        known = sorted(set(_CLASSES) | set(_MODULES))
        raise ValueError(f"unknown scheduler {name!r}; available schedulers: {known}")
    return _CLASSES[name]


@dataclass(frozen=True, eq=False, kw_only=True)
class SchedulerConfig(Mapping):
    """A scheduler's frozen config: diffusers' keys as attributes, and a read-only mapping like diffusers' FrozenDict.

    Beside its own fields it keeps diffusers' bookkeeping so configs travel between scheduler classes as they do
    in diffusers: `_use_default_values` (fields left at their default, which another class must not inherit)
    and `_hidden` (keys of other schedulers, `_class_name`, ... carried along unchanged).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    _use_default_values: tuple[str, ...] = field(default=(), repr=False)
    _hidden: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # key -> supported values; keys not listed take any value of their type
    choices: ClassVar[dict[str, tuple]] = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction", "sample"),
    }
    # key -> {value of another scheduler: our equivalent}, applied before validation (as diffusers does)
    aliases: ClassVar[dict[str, dict[Any, Any]]] = {}
    sigma_schedule_keys: ClassVar[dict[str, str]] = {
        "use_karras_sigmas": "karras",
        "use_exponential_sigmas": "exponential",
        "use_beta_sigmas": "beta",
    }

    def __post_init__(self) -> None:
        for key, table in self.aliases.items():
            value = getattr(self, key)
            if isinstance(value, str) and value in table:
                object.__setattr__(self, key, table[value])
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float64).reshape(-1)
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in betas))
        for key, supported in self.choices.items():
            value = getattr(self, key)
            if value not in supported:
                raise ValueError(
                    f"{self.scheduler_name} does not support {key}={value!r}; supported values: {supported}"
                )
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(self.trained_betas)} values but num_train_timesteps is "
                f"{self.num_train_timesteps}; give one beta per training timestep"
            )
        chosen = [key for key in self.sigma_schedule_keys if getattr(self, key, False)]
        if len(chosen) > 1:
            raise ValueError(f"{self.scheduler_name}: only one of {chosen} can be True")
        self.validate()

    def validate(self) -> None:
        """Checks across keys; subclasses raise ValueError for combinations they do not support."""

    @property
    def scheduler_name(self) -> str:
        return type(self).__name__.removesuffix("Config")

    @property
    def sigma_schedule(self) -> str | None:
        """'karras', 'exponential', 'beta' (from the use_*_sigmas keys), or None for the interpolated schedule."""
        for key, kind in self.sigma_schedule_keys.items():
            if getattr(self, key, False):
                return kind
        return None

    # --- construction ---

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The diffusers keys this config has (its public fields)."""
        return tuple(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> SchedulerConfig:
        """The config of `Scheduler(**kwargs)`: unknown keys are a TypeError, as for any Python call."""
        names = cls.field_names()
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"{cls.__name__.removesuffix('Config')} got unexpected config keys {unknown}; its keys are {list(names)}"
            )
        defaults = tuple(sorted(set(names) - set(kwargs)))
        return cls(**kwargs, _use_default_values=defaults)

    @classmethod
    def from_mapping(
        cls, source: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, class_name: str | None = None
    ) -> tuple[SchedulerConfig, dict[str, Any]]:
        """The config diffusers' `from_config(source, **overrides)` builds; returns it and the unused overrides.

        Keys `source` left at their defaults (its `_use_default_values`) are not inherited. Keys this config
        does not have are kept as hidden entries, so a round trip through another scheduler class keeps them.
        """
        overrides = dict(overrides or {})
        used_defaults = set(source.get("_use_default_values", ()))
        src = {k: v for k, v in source.items() if k not in used_defaults and k != "_use_default_values"}
        names = cls.field_names()
        given = {k: src[k] for k in names if k in src}
        given.update({k: overrides.pop(k) for k in names if k in overrides})
        hidden = {k: v for k, v in src.items() if k not in given}
        if "_class_name" in hidden and class_name is not None:
            hidden["_class_name"] = class_name
        defaults = tuple(sorted(set(names) - set(given)))
        return cls(**given, _use_default_values=defaults, _hidden=hidden), overrides

    # --- read-only mapping (dict(config), config["key"], config.get("key")) ---

    def __iter__(self):
        yield from self.field_names()
        if self._use_default_values:
            yield "_use_default_values"
        yield from self._hidden

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key: str) -> Any:
        if key in self.field_names():
            return getattr(self, key)
        if key == "_use_default_values" and self._use_default_values:
            return list(self._use_default_values)
        if key in self._hidden:
            return self._hidden[key]
        raise KeyError(key)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not fields: hidden keys read as attributes, as in diffusers
        hidden = self.__dict__.get("_hidden", {})
        if name in hidden:
            return hidden[name]
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    def to_json_dict(self) -> dict[str, Any]:
        """What scheduler_config.json holds: every key except `_use_default_values`, lists for tuples."""
        out = {k: v for k, v in self.items() if k != "_use_default_values"}
        if out.get("trained_betas") is not None:
            out["trained_betas"] = list(out["trained_betas"])
        return out


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

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
        betas = make_betas(
            config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end, config.trained_betas
        )
        zero_snr = bool(getattr(config, "rescale_betas_zero_snr", False))
        self.betas = rescale_zero_terminal_snr(betas) if zero_snr else betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = make_alphas_cumprod(self.betas, zero_snr)
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor
        self.sigmas: torch.Tensor
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._init_schedule()

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
            sigmas = np.asarray(sigmas)
            if sigmas.ndim != 1 or len(sigmas) < 2:
                raise ValueError(
                    f"sigmas must be a 1-D sequence of at least 2 values (the last is the final sigma), got shape {sigmas.shape}"
                )
        if num_inference_steps is not None:
            num_inference_steps = int(num_inference_steps)
        schedule_timesteps, schedule_sigmas = self._schedule(num_inference_steps, timesteps, sigmas)
        self.timesteps = schedule_timesteps.to(device=device)
        self.sigmas = schedule_sigmas.to("cpu")  # per-step scalars stay on the host, as in diffusers
        self._step_index = None
        self._begin_index = None
        self._prepare_steps()

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
