"""Which of our classes loads each diffusers/transformers class name, and how (config class, key map).

`model_index.json` names components by their reference class (`["transformers", "CLIPTokenizer"]`); this table
maps those names to sdxl classes. Modules are imported on first use so that reading the table is free.
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from typing import Any

MODEL = "model"
TOKENIZER = "tokenizer"
SCHEDULER = "scheduler"
PROCESSOR = "processor"


@dataclass(frozen=True)
class ModelEntry:
    """Where a model class lives, the name of its config dataclass there, and its key-map family."""

    module: str
    config: str
    keymap: str | None = None


MODELS: dict[str, ModelEntry] = {
    "UNet2DConditionModel": ModelEntry("sdxl.models.unet", "UNetConfig"),
    "AutoencoderKL": ModelEntry("sdxl.models.vae", "VAEConfig"),
    "AutoencoderTiny": ModelEntry("sdxl.models.vae_tiny", "AutoencoderTinyConfig"),
    "CLIPTextModel": ModelEntry("sdxl.models.clip", "CLIPTextConfig", keymap="clip_text"),
    "CLIPTextModelWithProjection": ModelEntry("sdxl.models.clip", "CLIPTextConfig", keymap="clip_text"),
    "CLIPVisionModelWithProjection": ModelEntry("sdxl.models.clip_vision", "CLIPVisionConfig", keymap="clip_vision"),
}

# reference class name -> (module, our class name); transformers 5's CLIPTokenizer is the fast one.
TOKENIZERS: dict[str, tuple[str, str]] = {
    "CLIPTokenizer": ("sdxl.tokenizer", "CLIPTokenizer"),
    "CLIPTokenizerFast": ("sdxl.tokenizer", "CLIPTokenizer"),
}

# image processors (a pipeline's `feature_extractor`), read from preprocessor_config.json
PROCESSORS: dict[str, tuple[str, str]] = {
    "CLIPImageProcessor": ("sdxl.clip_image_processor", "CLIPImageProcessor"),
    "CLIPFeatureExtractor": ("sdxl.clip_image_processor", "CLIPImageProcessor"),
}

# Other scheduler names resolve through the public `sdxl` namespace once they are added there.
SCHEDULERS: dict[str, str] = {
    "EulerDiscreteScheduler": "sdxl.schedulers.euler",
    "DPMSolverMultistepScheduler": "sdxl.schedulers.dpm_multistep",
}


def supported_names() -> list[str]:
    """Every class name a `model_index.json` may use, for error messages."""
    return sorted({*MODELS, *TOKENIZERS, *PROCESSORS, *SCHEDULERS})


def registered_name(cls: type) -> str | None:
    """The registry name of a model class or of its nearest registered base class."""
    for klass in cls.__mro__:
        if klass.__name__ in MODELS and klass.__module__ == MODELS[klass.__name__].module:
            return klass.__name__
    return None


def model_entry(cls: type) -> ModelEntry | None:
    """The registry entry of a model class or of its nearest registered base class."""
    name = registered_name(cls)
    return MODELS[name] if name is not None else None


def config_class(cls: type) -> type:
    """The config dataclass of a model class: `cls.config_class`, else the registry, else the `config` annotation."""
    explicit = getattr(cls, "config_class", None)
    if isinstance(explicit, type):
        return explicit
    entry = model_entry(cls)
    if entry is not None:
        found = getattr(importlib.import_module(entry.module), entry.config, None)
        if isinstance(found, type):
            return found
    try:
        hint = typing.get_type_hints(cls).get("config")
    except (NameError, TypeError):
        hint = None
    if isinstance(hint, type) and hasattr(hint, "from_dict"):
        return hint
    raise TypeError(
        f"cannot tell which config dataclass {cls.__name__} is built from: give it a `config_class` attribute, "
        "a `config: <Config>` annotation, or an entry in sdxl/loading/registry.py."
    )


def keymap_family(cls: type) -> str | None:
    """The key-map family (see keymaps.py) of a model class, if its checkpoints come in other spellings."""
    explicit = getattr(cls, "keymap", None)
    if isinstance(explicit, str):
        return explicit
    entry = model_entry(cls)
    return entry.keymap if entry is not None else None


def _unsupported(component: str, library: Any, class_name: Any, why: str = "") -> ValueError:
    return ValueError(
        f"model_index.json: component {component!r} is {library}.{class_name}, which sdxl cannot load{why}. "
        f"Supported classes: {', '.join(supported_names())}. Pass your own object for it "
        f"(`{component}=...`) or `{component}=None` to leave it out."
    )


def resolve_component(component: str, library: Any, class_name: Any) -> tuple[str, type]:
    """(kind, our class) for a `model_index.json` entry `[library, class_name]`; kind is model, tokenizer,
    processor or scheduler."""
    if not isinstance(class_name, str):
        raise _unsupported(component, library, class_name)
    try:
        if class_name in MODELS:
            return MODEL, getattr(importlib.import_module(MODELS[class_name].module), class_name)
        if class_name in TOKENIZERS:
            module, name = TOKENIZERS[class_name]
            return TOKENIZER, getattr(importlib.import_module(module), name)
        if class_name in PROCESSORS:
            module, name = PROCESSORS[class_name]
            return PROCESSOR, getattr(importlib.import_module(module), name)
        if class_name in SCHEDULERS:
            return SCHEDULER, getattr(importlib.import_module(SCHEDULERS[class_name]), class_name)
    except (ImportError, AttributeError) as e:
        raise _unsupported(component, library, class_name, f" in this build ({e})") from e
    if class_name.endswith("Scheduler"):
        try:
            cls = getattr(importlib.import_module("sdxl"), class_name, None)
        except ImportError as e:
            raise _unsupported(component, library, class_name, f" in this build ({e})") from e
        if isinstance(cls, type) and hasattr(cls, "from_config"):
            return SCHEDULER, cls
    raise _unsupported(component, library, class_name)
