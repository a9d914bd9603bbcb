"""Low-rank adapters (LoRA, LyCORIS LoHa and LoKr) on the Linear and Conv2d layers of any model.

An adapted layer stays the same object: its class is switched to `LoraLinear` / `LoraConv2d` (subclasses of
`nn.Linear` / `nn.Conv2d`), so its weight, bias, state-dict keys and hooks are untouched and `isinstance` checks
still hold. The adapters hang off it in `lora_adapters`, an `nn.ModuleDict` of non-persistent buffers: `.to()` moves
them, `state_dict()` never shows them, and `remove_adapters` switches the class back.

Unfused, a LoRA adds `up(down(x)) * scale` to the layer's output in place (a small matmul and an addmm, no weight
copy; LoHa and LoKr build their weight delta on the fly). Fused, the active adapters' delta is added to the weight in place; a CPU copy
of the original weight is kept so that unfusing restores the exact original bytes (what subtracting the delta back,
as peft does, cannot promise in floating point).

Scales follow peft/diffusers: per adapter `alpha / rank` (alpha = rank when a file has none), times the adapter
weight (`set_adapters`), times a per-call multiplier (`cross_attention_kwargs={"scale": s}`, `lora_scale`).
Formulas: LoRA as peft 0.21 `tuners/lora/layer.py`; LoHa/LoKr as LyCORIS (and ComfyUI `comfy/weight_adapter/`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LORA, LOHA, LOKR = "lora", "loha", "lokr"


@dataclass
class AdapterWeights:
    """One adapter's tensors for one layer. `kind` is LORA (down, up), LOHA (w1_a, w1_b, w2_a, w2_b, optional
    t1, t2) or LOKR (w1 or w1_a/w1_b, w2 or w2_a/w2_b, optional t2); `alpha` None means alpha = rank (scale 1)."""

    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None

    def rank(self) -> int | None:
        """The rank that alpha divides; None for a LoKr with no low-rank factor (LyCORIS then ignores alpha)."""
        t = self.tensors
        if self.kind == LORA:
            return t["down"].shape[0]
        if self.kind == LOHA:
            return t["w1_b"].shape[0]
        if "w2_b" in t:
            return t["w2_b"].shape[0]
        return t["w1_b"].shape[0] if "w1_b" in t else None

    def scale(self) -> float:
        """alpha / rank, or 1.0 where alpha or rank is not given."""
        rank = self.rank()
        return 1.0 if self.alpha is None or rank is None else self.alpha / rank


class Adapter(nn.Module):
    """One adapter on one layer: its tensors as non-persistent buffers and its alpha / rank scale."""

    def __init__(self, weights: AdapterWeights, like: torch.Tensor):
        super().__init__()
        self.kind = weights.kind
        self.scale = weights.scale()
        for name, tensor in weights.tensors.items():
            self.register_buffer(name, tensor.to(device=like.device, dtype=like.dtype), persistent=False)

    def _get(self, name: str) -> torch.Tensor | None:
        return self._buffers.get(name)

    def delta_weight(self, shape: torch.Size) -> torch.Tensor:
        """The unscaled (alpha/rank included) weight delta, reshaped to the layer weight's `shape`."""
        if self.kind == LORA:
            down, up = self._get("down"), self._get("up")
            # (out, r) @ (r, in * kh * kw), as peft's conv and linear get_delta_weight
            delta = up.flatten(1) @ down.flatten(1)
        elif self.kind == LOHA:
            delta = self._factor("w1", "t1") * self._factor("w2", "t2")
        else:
            w1, w2 = self._factor("w1", None), self._factor("w2", "t2")
            if w2.dim() == 4:
                w1 = w1[:, :, None, None]
            delta = torch.kron(w1, w2)
        return delta.reshape(shape) * self.scale

    def _factor(self, name: str, tucker: str | None) -> torch.Tensor:
        full = self._get(name)
        if full is not None:
            return full
        a, b = self._get(f"{name}_a"), self._get(f"{name}_b")
        core = self._get(tucker) if tucker else None
        if core is not None:  # Tucker decomposition of a conv kernel (LyCORIS `use_tucker`)
            return torch.einsum("ijkl,jr,ip->prkl", core, b, a)
        return a @ b

    def add_to(self, out: torch.Tensor, x: torch.Tensor, layer: nn.Module, multiplier: float) -> torch.Tensor:
        """`out` (the layer's output for input x) plus this adapter's output times `multiplier` (alpha/rank
        included). A linear LoRA adds in place with one addmm: no temporary of the output's size."""
        factor = multiplier * self.scale
        if self.kind == LORA:
            down, up = self._get("down"), self._get("up")
            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(x, down, None, layer.stride, layer.padding, layer.dilation, layer.groups)
                return out.add_(F.conv2d(h, up), alpha=factor)
            h = F.linear(x, down)  # (..., rank)
            if not out.is_contiguous():
                return out + F.linear(h, up) * factor
            out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), up.t(), alpha=factor)
            return out
        delta = self.delta_weight(layer.weight.shape) * multiplier
        if isinstance(layer, nn.Conv2d):
            return out.add_(F.conv2d(x, delta, None, layer.stride, layer.padding, layer.dilation, layer.groups))
        return out.add_(F.linear(x, delta))


class AdaptedLayer:
    """State and behaviour that LoraLinear and LoraConv2d share (a mixin over nn.Linear / nn.Conv2d)."""

    lora_adapters: nn.ModuleDict
    lora_active: dict[str, float]  # active adapter name -> weight (set_adapters)
    lora_enabled: bool
    lora_call_scale: float
    lora_fused: tuple[str, ...]
    lora_original: torch.Tensor | None

    def _init_lora(self) -> None:
        self.lora_adapters = nn.ModuleDict()
        self.lora_active = {}
        self.lora_enabled = True
        self.lora_call_scale = 1.0
        self.lora_fused = ()
        self.lora_original = None

    def add_lora(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The base output `out` plus the active, unfused adapters' outputs (in place)."""
        if not self.lora_enabled or self.lora_fused or not self.lora_active:
            return out
        x = x.to(self.weight.dtype)
        for name, weight in self.lora_active.items():
            out = self.lora_adapters[name].add_to(out, x, self, weight * self.lora_call_scale)
        return out

    def fuse(self, scale: float = 1.0, chosen: dict[str, float] | None = None) -> None:
        """Add the deltas of the active adapters (or of `chosen`: name -> weight), times their weights and `scale`,
        to the weight in place."""
        chosen = self.lora_active if chosen is None else chosen
        if self.lora_fused or not chosen or not self.lora_enabled:
            return
        weight = self.weight
        self.lora_original = weight.detach().to("cpu", copy=True)
        with torch.no_grad():
            delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for name, w in chosen.items():
                delta += self.lora_adapters[name].delta_weight(weight.shape).float() * (w * scale)
            weight.copy_((weight.float() + delta).to(weight.dtype))
        self.lora_fused = tuple(chosen)

    def unfuse(self) -> None:
        """Put back the exact weight from before `fuse`."""
        if not self.lora_fused:
            return
        with torch.no_grad():
            self.weight.copy_(self.lora_original.to(self.weight.device))
        self.lora_original = None
        self.lora_fused = ()


class LoraLinear(nn.Linear, AdaptedLayer):
    """An nn.Linear carrying low-rank adapters (made by `add_adapter`, never constructed directly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_lora(F.linear(x, self.weight, self.bias), x)


class LoraConv2d(nn.Conv2d, AdaptedLayer):
    """An nn.Conv2d carrying low-rank adapters (made by `add_adapter`, never constructed directly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_lora(self._conv_forward(x, self.weight, self.bias), x)


_ADAPTED = {nn.Linear: LoraLinear, nn.Conv2d: LoraConv2d}


def check_shapes(layer: nn.Module, weights: AdapterWeights, where: str) -> None:
    """ValueError when the adapter's delta cannot have the layer's weight shape."""
    out_f, in_f = layer.weight.shape[0], layer.weight[0].numel()
    t = weights.tensors
    if weights.kind == LORA:
        down, up = t["down"], t["up"]
        ok = down.shape[0] == up.shape[1] and up.shape[0] == out_f and down[0].numel() == in_f
        if isinstance(layer, nn.Conv2d):
            ok = ok and down.dim() == 4 and tuple(down.shape[2:]) == tuple(layer.kernel_size)
    else:
        probe = Adapter(weights, torch.empty(0))
        try:
            ok = probe.delta_weight(torch.Size([-1])).numel() == layer.weight.numel()
        except RuntimeError:
            ok = False
    if not ok:
        shapes = {k: list(v.shape) for k, v in t.items()}
        raise ValueError(
            f"{where}: the {weights.kind} tensors {shapes} do not fit the layer's weight {list(layer.weight.shape)}; "
            "the file was made for another model (SD 1.5 vs SDXL, base vs refiner)."
        )


def cast_batched(tensors: list[torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
    """`tensors` in `like`'s dtype and device, converted with one op per source dtype (hundreds of small per-tensor
    conversions cost several times more); the results are views of one buffer."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.dtype == like.dtype and t.device == like.device:
            out[i] = t
        else:
            groups.setdefault(t.dtype, []).append(i)
    for indices in groups.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices]).to(device=like.device, dtype=like.dtype)
        for i, part in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            out[i] = part.view(tensors[i].shape)
    return out  # type: ignore[return-value]


def add_adapter(layer: nn.Module, name: str, weights: AdapterWeights) -> None:
    """Attach adapter `name` to a Linear or Conv2d layer, switching its class on first use, and make it active."""
    if not isinstance(layer, AdaptedLayer):
        cls = _ADAPTED.get(type(layer))
        if cls is None:
            raise TypeError(f"LoRA adapters apply to nn.Linear and nn.Conv2d layers, not {type(layer).__name__}.")
        layer.__class__ = cls
        layer._init_lora()
    if layer.lora_fused:
        raise ValueError("cannot add an adapter to a fused layer: call unfuse_lora() first.")
    layer.lora_adapters[name] = Adapter(weights, layer.weight)


def adapted_layers(model: nn.Module) -> Iterator[AdaptedLayer]:
    """Every layer of `model` that carries adapters."""
    return (m for m in model.modules() if isinstance(m, AdaptedLayer))


def remove_adapters(model: nn.Module, names: set[str] | None = None) -> None:
    """Remove the named adapters (all when None) from `model`; a layer left without any becomes a plain layer again.

    Removing every adapter keeps fused weights fused, as diffusers' `unload_lora_weights` does (fuse, then unload,
    bakes a LoRA in); removing some unfuses the layers whose fused adapters include one of them.
    """
    for layer in list(adapted_layers(model)):
        if names is not None and set(layer.lora_fused) & names:
            layer.unfuse()
        for name in list(layer.lora_adapters):
            if names is None or name in names:
                del layer.lora_adapters[name]
                layer.lora_active.pop(name, None)
        if not len(layer.lora_adapters):
            for attr in ("lora_adapters", "lora_active", "lora_enabled", "lora_call_scale", "lora_fused",
                         "lora_original"):
                delattr(layer, attr)
            layer.__class__ = nn.Linear if isinstance(layer, nn.Linear) else nn.Conv2d


def adds_adapter_output(layer: nn.Module) -> bool:
    """Whether `layer` adds unfused adapter outputs to its own in its forward (enabled, unfused, some active)."""
    return (
        isinstance(layer, AdaptedLayer) and layer.lora_enabled and not layer.lora_fused and bool(layer.lora_active)
    )


def set_active(model: nn.Module, weights: dict[str, float]) -> None:
    """Make exactly the adapters in `weights` (name -> weight) active on every layer that has them."""
    for layer in adapted_layers(model):
        if layer.lora_fused:
            raise ValueError("set_adapters() on fused LoRA weights: call unfuse_lora() first.")
        layer.lora_active = {n: w for n, w in weights.items() if n in layer.lora_adapters}


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter of `model` off (the base layers alone) or back on; disabling unfuses fused layers."""
    for layer in adapted_layers(model):
        if not enabled:
            layer.unfuse()
        layer.lora_enabled = enabled


@contextmanager
def call_scale(model: nn.Module, scale: float | None) -> Iterator[None]:
    """Multiply every unfused adapter's output by `scale` for the duration of one call (diffusers' `scale`)."""
    if scale is None or scale == 1.0:
        yield
        return
    layers = list(adapted_layers(model))
    for layer in layers:
        layer.lora_call_scale = float(scale)
    try:
        yield
    finally:
        for layer in layers:
            layer.lora_call_scale = 1.0


def check_cross_attention_kwargs(kwargs: Mapping[str, Any] | None) -> float | None:
    """The LoRA `scale` of diffusers' `cross_attention_kwargs` (None when absent); keys other than "scale" and
    "ip_adapter_masks" (read by the UNet's IP-Adapter layers) are a TypeError."""
    if not kwargs:
        return None
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"cross_attention_kwargs must be a dict, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - {"scale", "ip_adapter_masks"})  # the masks are IP-Adapter's (models/ip_adapter.py)
    if unknown:
        raise TypeError(
            f"cross_attention_kwargs keys {unknown} are not supported: sdxl takes {{'scale': s}} (the LoRA scale) and "
            "'ip_adapter_masks' (IP-Adapter)."
        )
    scale = kwargs.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"cross_attention_kwargs['scale'] must be a number, got {scale!r}")
    return None if scale is None else float(scale)
