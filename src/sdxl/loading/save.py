"""Write pipeline components: one original-layout file (`save_single_file`) or a diffusers folder (`save_pretrained`).

Both take a `{name: component}` dict (a pipeline's `.components`), so the `sdxl convert` command and the pipeline
methods share them. The single file is the exact inverse of single_file.py's loading (same key tables).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from sdxl.loading import keymaps
from sdxl.loading.files import add_variant
from sdxl.loading.single_file import CLIP_G, CLIP_G_REFINER, CLIP_L, CONFIGS_KEY, UNET, VAE, key_table

logger = logging.getLogger(__name__)

MODEL_LIBRARY = {
    "UNet2DConditionModel": "diffusers",
    "AutoencoderKL": "diffusers",
    "CLIPTextModel": "transformers",
    "CLIPTextModelWithProjection": "transformers",
    "CLIPVisionModelWithProjection": "transformers",
}


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def original_state_dict(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The original Stability single-file state dict of the models in `components` (refiner layout when there is
    a text_encoder_2 but no text_encoder)."""
    if components.get("unet") is None:
        raise ValueError("A single file needs the unet; the components have none.")
    refiner = components.get("text_encoder") is None and components.get("text_encoder_2") is not None
    out: dict[str, torch.Tensor] = {}
    for part in (UNET, VAE, CLIP_L, CLIP_G_REFINER if refiner else CLIP_G):
        model = components.get(part.name)
        if model is None:
            continue
        out.update(keymaps.to_original(_state_dict(model), key_table(part, model.config)))
    return out


def component_configs(components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: config.json content} of the models in `components`, and the scheduler's config (with its class)."""
    configs: dict[str, dict[str, Any]] = {}
    for name, component in components.items():
        if isinstance(component, torch.nn.Module):
            configs[name] = dict(component.config.to_dict())
        elif hasattr(component, "config") and hasattr(component.config, "to_json_dict"):
            configs[name] = {**component.config.to_json_dict(), "_class_name": type(component).__name__}
    return configs


def save_single_file(components: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the models of `components` as one safetensors file in the original Stability layout.

    The models' and the scheduler's configs go into the file's metadata (key `sdxl_configs`, JSON), so a model of
    any size loads back with `from_single_file(path)` alone; other tools ignore the key.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; save_single_file writes one .safetensors file (give a file name).")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder for {path} does not exist; create {path.parent} first.")
    metadata = {"format": "pt", CONFIGS_KEY: json.dumps(component_configs(components), sort_keys=True)}
    save_file(original_state_dict(components), str(path), metadata=metadata)
    logger.info("Wrote %s", path)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _model_class_name(model: Any) -> str:
    for klass in type(model).__mro__:
        if klass.__name__ in MODEL_LIBRARY:
            return klass.__name__
    raise TypeError(f"save_pretrained cannot write a {type(model).__name__}; it writes {sorted(MODEL_LIBRARY)}.")


def save_model(
    model: torch.nn.Module, folder: str | os.PathLike, *, variant: str | None = None, safe_serialization: bool = True
) -> Path:
    """Write one model as diffusers/transformers do: `config.json` and its safetensors weights (`variant` in the name).

    `safe_serialization=False` asks diffusers for pickles; sdxl writes safetensors whatever it says (it never writes
    pickles, and both libraries read these files)."""
    from safetensors.torch import save_file

    if not safe_serialization:
        logger.info("safe_serialization=False: sdxl writes safetensors anyway (it never writes pickle files).")
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder} is a file; save_pretrained writes a folder.")
    cls = _model_class_name(model)
    config = dict(model.config.to_dict())
    if MODEL_LIBRARY[cls] == "transformers":
        config.pop("_class_name", None)
        config["architectures"] = [cls]
        weights = "model.safetensors"
    else:
        config["_class_name"] = cls
        weights = "diffusion_pytorch_model.safetensors"
    _write_json(folder / "config.json", config)
    save_file(_state_dict(model), str(folder / add_variant(weights, variant)), metadata={"format": "pt"})
    return folder


def save_pretrained(
    components: dict[str, Any],
    folder: str | os.PathLike,
    *,
    class_name: str = "StableDiffusionXLPipeline",
    options: dict[str, Any] | None = None,
    variant: str | None = None,
) -> Path:
    """Write a diffusers-layout pipeline folder: model_index.json and one subfolder per component."""
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder} is a file; save_pretrained writes a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": class_name, **(options or {})}
    for name, component in components.items():
        sub = folder / name
        if component is None:
            index[name] = [None, None]
        elif isinstance(component, torch.nn.Module):
            save_model(component, sub, variant=variant)
            cls = _model_class_name(component)
            index[name] = [MODEL_LIBRARY[cls], cls]
        elif hasattr(component, "save_pretrained") and not hasattr(component, "step"):
            component.save_pretrained(sub)
            index[name] = ["transformers", type(component).__name__]  # CLIPTokenizer, CLIPImageProcessor
        elif hasattr(component, "config") and hasattr(component.config, "to_json_dict"):
            _write_json(sub / "scheduler_config.json", component.config.to_json_dict())
            index[name] = ["diffusers", type(component).__name__]
        else:
            raise TypeError(f"save_pretrained cannot write component {name!r} of type {type(component).__name__}.")
    _write_json(folder / "model_index.json", index)
    logger.info("Wrote %s", folder)
    return folder
