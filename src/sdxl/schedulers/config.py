"""SchedulerConfig: a scheduler's frozen config with diffusers' keys, readable as a mapping like diffusers' FrozenDict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sdxl.schedulers.sigmas import BETA_SCHEDULES


@dataclass(frozen=True, eq=False, kw_only=True)
class ConfigMapping(Mapping):
    """A frozen config: diffusers' keys as attributes, and a read-only mapping like diffusers' FrozenDict.

    Beside its own fields it keeps diffusers' bookkeeping so configs travel between scheduler classes as they do
    in diffusers: `_use_default_values` (fields left at their default, which another class must not inherit)
    and `_hidden` (keys of other schedulers, `_class_name`, ... carried along unchanged). The EDM schedulers'
    configs derive from it directly (they have no betas); the others from `SchedulerConfig`.
    """

    _use_default_values: tuple[str, ...] = field(default=(), repr=False)
    _hidden: Mapping[str, Any] = field(default_factory=dict, repr=False)

    # key -> supported values; keys not listed take any value of their type
    choices: ClassVar[dict[str, tuple]] = {}
    # key -> {value of another scheduler: our equivalent}, applied before validation (as diffusers does)
    aliases: ClassVar[dict[str, dict[Any, Any]]] = {}

    def __post_init__(self) -> None:
        for key, table in self.aliases.items():
            value = getattr(self, key)
            if isinstance(value, str) and value in table:
                object.__setattr__(self, key, table[value])
        for key, supported in self.choices.items():
            value = getattr(self, key)
            if value not in supported:
                raise ValueError(
                    f"{self.scheduler_name} does not support {key}={value!r}; supported values: {supported}"
                )
        num_train = getattr(self, "num_train_timesteps", 2)
        if not isinstance(num_train, int) or num_train < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train!r}")
        self._check_keys()
        self.validate()

    def _check_keys(self) -> None:
        """Checks of the keys a family of configs shares (before `validate`)."""

    def validate(self) -> None:
        """Checks across keys; subclasses raise ValueError for combinations they do not support."""

    @property
    def scheduler_name(self) -> str:
        return type(self).__name__.removesuffix("Config")

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


@dataclass(frozen=True, eq=False, kw_only=True)
class SchedulerConfig(ConfigMapping):
    """The config of a scheduler over a discrete VP schedule: diffusers' training-schedule keys (the betas)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"

    choices: ClassVar[dict[str, tuple]] = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction", "sample"),
    }
    sigma_schedule_keys: ClassVar[dict[str, str]] = {
        "use_karras_sigmas": "karras",
        "use_exponential_sigmas": "exponential",
        "use_beta_sigmas": "beta",
    }

    def _check_keys(self) -> None:
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float64).reshape(-1)
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in betas))
            if len(self.trained_betas) != self.num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {len(self.trained_betas)} values but num_train_timesteps is "
                    f"{self.num_train_timesteps}; give one beta per training timestep"
                )
        chosen = [key for key in self.sigma_schedule_keys if getattr(self, key, False)]
        if len(chosen) > 1:
            raise ValueError(f"{self.scheduler_name}: only one of {chosen} can be True")

    @property
    def sigma_schedule(self) -> str | None:
        """'karras', 'exponential', 'beta' (from the use_*_sigmas keys), or None for the interpolated schedule."""
        for key, kind in self.sigma_schedule_keys.items():
            if getattr(self, key, False):
                return kind
        return None
