"""Small stand-in models and a folder writer for loader tests that do not depend on the real model classes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sdxl.models.base import ConfiguredModel

_META_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "architectures", "transformers_version"}


@dataclass(frozen=True)
class TinyConfig:
    width: int = 4
    depth: int = 2

    @classmethod
    def from_dict(cls, d: dict) -> TinyConfig:
        unknown = set(d) - _META_KEYS - {"width", "depth"}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in ("width", "depth")})

    def to_dict(self) -> dict:
        return asdict(self)


class TinyModel(ConfiguredModel):
    """Linear layers plus a persistent buffer; records the device it was built on."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.built_on = torch.empty(0).device
        self.layers = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.register_buffer("scale", torch.ones(config.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) * self.scale


class TinyClip(ConfiguredModel):
    """State-dict keys shaped like the official CLIP text encoder (`text_model.` prefix)."""

    config_class = TinyConfig
    keymap = "clip_text"

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.text_model = nn.Module()
        self.text_model.embeddings = nn.Module()
        self.text_model.embeddings.token_embedding = nn.Embedding(10, config.width)
        self.text_model.final_layer_norm = nn.LayerNorm(config.width)


class TinyClipWithProjection(TinyClip):
    def __init__(self, config: TinyConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.width, config.width, bias=False)


class TinyScheduler:
    def __init__(self, config: dict):
        self.config = config

    @classmethod
    def from_config(cls, config: dict) -> TinyScheduler:
        if "num_train_timesteps" not in config:
            raise ValueError("num_train_timesteps missing")
        return cls(config)


def random_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the keys/shapes/dtypes of `model` (which may live on the meta device)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in model.state_dict().items()}


def write_model_folder(
    folder: Path,
    config: dict,
    state: dict[str, torch.Tensor],
    *,
    stem: str = "diffusion_pytorch_model",
    variant: str | None = None,
    shards: int = 1,
) -> Path:
    """Write config.json and the weights as diffusers names them (`shards` > 1: `-0000k-of-0000n` + index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    mid = f".{variant}" if variant else ""
    state = {k: v.contiguous() for k, v in state.items()}
    if shards == 1:
        save_file(state, str(folder / f"{stem}{mid}.safetensors"), metadata={"format": "pt"})
        return folder
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}{mid}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index_name = f"{stem}.safetensors.index{mid}.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
