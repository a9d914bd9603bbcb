"""The pipelines' LoRA methods, with diffusers' names and arguments: thin calls into `models/lora.py`.

`load_lora_weights` reads a file (kohya/A1111, LyCORIS LoHa/LoKr, diffusers/PEFT; see `loading/lora_keys.py`) and
attaches one adapter to the UNet and text-encoder layers it names. As in diffusers, the newly loaded adapter becomes
the only active one of each component it touches; `set_adapters` chooses the active ones and their weights.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from sdxl.models import lora as layers
from sdxl.prompts.lora_tags import extract_lora_tags, merge_lora_choices

LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


def read_lora(source: Any, weight_name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) from a dict, a .safetensors file, a folder or a hub id (+ weight_name).

    Only safetensors are read: a pickle (.bin/.pt/.ckpt) is refused by its content, whatever its name.
    """
    from safetensors import safe_open

    from sdxl.loading.hub import looks_like_hub_id, resolve_single_file
    from sdxl.loading.weights import load_file

    if isinstance(source, Mapping):
        return dict(source), {}
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        path = path / (weight_name or DEFAULT_WEIGHT_NAME)
    elif not path.exists() and looks_like_hub_id(str(source)):
        url = f"https://huggingface.co/{source}/blob/main/{weight_name or DEFAULT_WEIGHT_NAME}"
        path = resolve_single_file(url)
    else:
        path = resolve_single_file(source)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist.")
    sd = load_file(path)  # validates the header and refuses pickles first
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return sd, metadata


def _weights_for(component: str, weight: Any) -> float:
    if isinstance(weight, Mapping):
        unknown = sorted(set(weight) - set(LORA_COMPONENTS))
        if unknown:
            raise ValueError(
                f"adapter weight keys {unknown} are not supported: give one number, or a dict over "
                f"{list(LORA_COMPONENTS)} (per-block UNet weights are not supported)."
            )
        weight = weight.get(component, 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"an adapter weight must be a number (or a dict of numbers per component), got {weight!r}")
    return float(weight)


class LoraLoaderMixin:
    """load_lora_weights, set_adapters, get_active_adapters, get_list_adapters, delete_adapters, fuse_lora,
    unfuse_lora, unload_lora_weights, disable_lora, enable_lora: diffusers' StableDiffusionXLLoraLoaderMixin API."""

    def _lora_models(self, components: Sequence[str] = LORA_COMPONENTS) -> dict[str, torch.nn.Module]:
        unknown = sorted(set(components) - set(LORA_COMPONENTS))
        if unknown:
            raise ValueError(f"LoRA components {unknown} are not known; choose from {list(LORA_COMPONENTS)}.")
        return {c: m for c in components if isinstance(m := getattr(self, c, None), torch.nn.Module)}

    def _lora_registry(self) -> dict[str, set[str]]:
        """{adapter name: components it was loaded into}, in load order."""
        if "_lora_loaded" not in self.__dict__:
            self._lora_loaded: dict[str, set[str]] = {}
        return self._lora_loaded

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        adapter_name: str | None = None,
        *,
        weight_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Attach a LoRA (file, folder + `weight_name`, hub id + `weight_name`, or state dict) as `adapter_name`
        (default `default_<n>`); it becomes the active adapter of the components it touches."""
        from sdxl.loading.lora_keys import parse_lora

        kwargs.pop("low_cpu_mem_usage", None)
        if kwargs:
            raise TypeError(f"load_lora_weights() got unexpected keyword arguments {sorted(kwargs)}.")
        registry = self._lora_registry()
        name = adapter_name if adapter_name is not None else f"default_{len(registry)}"
        if name in registry:
            raise ValueError(f"Adapter name {name!r} is already in use: pick another adapter_name.")
        sd, metadata = read_lora(pretrained_model_name_or_path_or_dict, weight_name)
        models = self._lora_models()
        check_not_quantized(models)
        found = parse_lora(sd, models, metadata)
        for component, entries in found.items():  # check every shape before touching any layer
            named = dict(models[component].named_modules())
            for path, weights in entries.items():
                layers.check_shapes(named[path], weights, f"LoRA {component}.{path}")
        for component, entries in found.items():
            named = dict(models[component].named_modules())
            like = next(iter(named[p] for p in entries)).weight
            flat = [(w, key) for w in entries.values() for key in w.tensors]
            for (w, key), tensor in zip(flat, layers.cast_batched([w.tensors[k] for w, k in flat], like)):
                w.tensors[key] = tensor
            for path, weights in entries.items():
                layers.add_adapter(named[path], name, weights)
            layers.set_active(models[component], {name: 1.0})
        registry[name] = set(found)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """{component: [adapter names loaded into it]}."""
        registry = self._lora_registry()
        out = {c: [n for n, comps in registry.items() if c in comps] for c in LORA_COMPONENTS}
        return {c: names for c, names in out.items() if names}

    def get_active_adapters(self) -> list[str]:
        """The adapters active in any component, in load order."""
        active: set[str] = set()
        for model in self._lora_models().values():
            for layer in layers.adapted_layers(model):
                active.update(layer.lora_active)
        return [n for n in self._lora_registry() if n in active]

    def set_adapters(
        self, adapter_names: str | list[str], adapter_weights: float | dict | list[float | dict | None] | None = None
    ) -> None:
        """Make exactly `adapter_names` active, each with its weight (default 1.0; a dict gives per-component
        weights, e.g. {"unet": 0.8, "text_encoder": 0.5})."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        registry = self._lora_registry()
        missing = sorted(set(names) - set(registry))
        if missing:
            raise ValueError(f"Adapter name(s) {missing} are not loaded; loaded: {list(registry)}.")
        if not isinstance(adapter_weights, list):
            adapter_weights = [adapter_weights] * len(names)
        if len(adapter_weights) != len(names):
            raise ValueError(
                f"{len(adapter_weights)} adapter weights for {len(names)} adapters: give one weight per adapter."
            )
        weights = [1.0 if w is None else w for w in adapter_weights]
        for component, model in self._lora_models().items():
            layers.set_active(model, {n: _weights_for(component, w) for n, w in zip(names, weights)})

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove the named adapters from every component."""
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        registry = self._lora_registry()
        missing = sorted(names - set(registry))
        if missing:
            raise ValueError(f"Adapter name(s) {missing} are not loaded; loaded: {list(registry)}.")
        for model in self._lora_models().values():
            layers.remove_adapters(model, names)
        for name in names:
            del registry[name]

    def unload_lora_weights(self) -> None:
        """Remove every adapter: the layers become plain ones again. Fused weights stay fused (as in diffusers:
        `fuse_lora()` then `unload_lora_weights()` bakes the LoRA in); call `unfuse_lora()` first to undo them."""
        for model in self._lora_models().values():
            layers.remove_adapters(model)
        self._lora_registry().clear()

    def fuse_lora(
        self,
        components: Sequence[str] = LORA_COMPONENTS,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
    ) -> None:
        """Add the active adapters (or `adapter_names`), times their weights and `lora_scale`, to the weights in
        place. `unfuse_lora` restores the exact original weights. `safe_fusing` refuses a result with NaNs."""
        for component, model in self._lora_models(components).items():
            for layer in layers.adapted_layers(model):
                chosen = None
                if adapter_names is not None:
                    chosen = {n: layer.lora_active.get(n, 1.0) for n in adapter_names if n in layer.lora_adapters}
                layer.fuse(lora_scale, chosen)
                if safe_fusing and not torch.isfinite(layer.weight).all():
                    self.unfuse_lora(components)
                    raise ValueError(f"fusing the LoRA into {component} gives non-finite weights; nothing was fused.")

    def unfuse_lora(self, components: Sequence[str] = LORA_COMPONENTS) -> None:
        """Put back the exact weights from before `fuse_lora`."""
        for model in self._lora_models(components).values():
            for layer in layers.adapted_layers(model):
                layer.unfuse()

    def disable_lora(self) -> None:
        """Run without any adapter (they stay loaded); fused weights are unfused."""
        for model in self._lora_models().values():
            layers.set_enabled(model, False)

    def enable_lora(self) -> None:
        """Undo `disable_lora`."""
        for model in self._lora_models().values():
            layers.set_enabled(model, True)

    def lora_call_scale(self, scale: float | None, components: Sequence[str] = LORA_COMPONENTS) -> ExitStack:
        """A context that multiplies the unfused adapters of `components` by `scale` (diffusers' `lora_scale` and
        `cross_attention_kwargs={"scale": s}`)."""
        stack = ExitStack()
        for model in self._lora_models(components).values():
            stack.enter_context(layers.call_scale(model, scale))
        return stack

    @contextmanager
    def prompt_adapters(self, choices: list[tuple[str, float]]) -> Iterator[None]:
        """Make exactly the loaded adapters `choices` [(name, weight)] active for the duration of the block, then put
        back what was active before (the `<lora:NAME:WEIGHT>` prompt tags)."""
        registry = self._lora_registry()
        missing = [name for name, _ in choices if name not in registry]
        if missing:
            raise ValueError(
                f"the prompt asks for LoRA {missing} (<lora:NAME:WEIGHT>), which is not loaded; loaded: "
                f"{list(registry)}. Load it first with pipe.load_lora_weights(FILE, adapter_name=NAME)."
            )
        saved = [(layer, dict(layer.lora_active)) for model in self._lora_models().values()
                 for layer in layers.adapted_layers(model)]
        self.set_adapters([n for n, _ in choices], [w for _, w in choices])
        try:
            yield
        finally:
            for layer, active in saved:
                layer.lora_active = active


PROMPT_ARGUMENTS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")


def with_prompt_loras(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a pipeline's `__call__`: with `prompt_syntax="a1111"`, `<lora:NAME:WEIGHT>` tags in the prompts are taken
    out of the text and make the loaded adapters NAME active at WEIGHT for that call (tags of every prompt of a batch
    apply to the whole batch)."""
    signature = inspect.signature(call)

    @functools.wraps(call)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        if bound.arguments.get("prompt_syntax") != "a1111":
            return call(self, *args, **kwargs)
        found: list[tuple[str, float]] = []
        for key in PROMPT_ARGUMENTS:
            value = bound.arguments.get(key)
            if isinstance(value, str):
                bound.arguments[key], tags = extract_lora_tags(value)
                found += tags
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                cleaned = [extract_lora_tags(v) for v in value]
                bound.arguments[key] = [text for text, _ in cleaned]
                found += [tag for _, tags in cleaned for tag in tags]
        if not found:
            return call(*bound.args, **bound.kwargs)
        with self.prompt_adapters(merge_lora_choices(found)):
            return call(*bound.args, **bound.kwargs)

    return wrapper


def check_not_quantized(models: dict[str, Any]) -> None:
    """ValueError, before any layer changes, when a model holds fp8 layers (`optimize(fp8=True)`): adapters need the
    original weights."""
    from sdxl.models.fp8 import is_quantized

    quantized = [name for name, model in models.items() if is_quantized(model)]
    if quantized:
        raise ValueError(
            f"load_lora_weights: the {', '.join(quantized)} holds fp8 layers (pipe.optimize(fp8=True)), which take no "
            "LoRA adapters. Load the LoRA into the model before optimize(fp8=True) and bake it in with "
            "pipe.fuse_lora() then pipe.unload_lora_weights(), or reload the model."
        )
