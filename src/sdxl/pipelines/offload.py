"""CPU offload with our own hooks (no accelerate): whole models one at a time, or submodule by submodule.

`ModelOffload` keeps every model on the CPU and moves one to the accelerator when it is called (its `forward`, or
the VAE's `encode`/`decode`), moving the model that was there before back to the CPU: at most one model is on the
accelerator at a time. `SequentialOffload` goes further: each submodule's own weights are copied to the
accelerator just for its forward and dropped after it, so only one layer's weights are there at a time.
Both move tensor inputs to the accelerator, as accelerate's hooks do.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sdxl.devices import detect_accelerator, is_available

logger = logging.getLogger(__name__)

# methods besides `forward` that run a model (diffusers' `apply_forward_hook` methods of the VAE)
_ENTRY_METHODS = ("encode", "decode")


def accelerator_device(gpu_id: int | None, device: torch.device | str | None, what: str) -> torch.device:
    """The accelerator `enable_*_offload(gpu_id, device)` should use; RuntimeError when there is none.

    `device` None picks the available accelerator (cuda, xpu, mps). `gpu_id` and an index inside `device` are
    mutually exclusive, as in diffusers.
    """
    if device is None:
        device = detect_accelerator()
        if device is None:
            raise RuntimeError(
                f"`{what}` requires an accelerator (CUDA, XPU or MPS), but none was found: on a CPU-only machine run "
                "the pipeline without offloading (it is already on the CPU)."
            )
    torch_device = torch.device(device)
    if torch_device.type in ("cpu", "meta"):
        raise ValueError(
            f"`{what}` moves models between the CPU and an accelerator, but got device={str(device)!r}: pass an "
            "accelerator such as 'cuda', or leave `device` out to detect one."
        )
    if gpu_id is not None and torch_device.index is not None:
        raise ValueError(
            f"`{what}` got both gpu_id={gpu_id} and the index in device={str(device)!r}: pass only one of them."
        )
    if not is_available(torch_device.type):
        raise RuntimeError(
            f"`{what}` was asked for device {str(device)!r}, but no {torch_device.type} device is available on this "
            "machine: leave `device` out to detect the accelerator, or run without offloading."
        )
    index = gpu_id if gpu_id is not None else (torch_device.index if torch_device.index is not None else 0)
    return torch.device(torch_device.type, index)




def to_device(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor inside (tuples, lists, dicts) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        moved = [to_device(o, device) for o in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _plain_tensors() -> Any:
    """Weights moved inside a pipeline call (inference mode) must stay ordinary tensors: an inference tensor as a
    parameter would refuse later in-place updates such as `load_state_dict`."""
    return torch.inference_mode(False) if torch.is_inference_mode_enabled() else torch.no_grad()


def _wrap_entry_methods(module: nn.Module, before: Callable[[tuple, dict], tuple[tuple, dict]]) -> list[str]:
    """Replace `module.encode`/`decode` (where present) by instance attributes that call `before` first."""
    wrapped = []
    for name in _ENTRY_METHODS:
        method = getattr(module, name, None)
        if not callable(method) or name in module.__dict__:
            continue

        def entry(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            args, kwargs = before(args, kwargs)
            return _method(*args, **kwargs)

        module.__dict__[name] = entry
        wrapped.append(name)
    return wrapped


class ModelOffload:
    """One model of `models` on `device` at a time; the others on `offload_device` (the CPU).

    `moves` records the last (name, "onload" | "offload") transitions, newest last, for inspection and tests.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        device: torch.device,
        offload_device: torch.device | str = "cpu",
    ):
        self.models = dict(models)
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.resident: str | None = None
        self.moves: deque[tuple[str, str]] = deque(maxlen=256)
        self._handles: list[Any] = []
        self._wrapped: list[tuple[nn.Module, list[str]]] = []
        for name, model in self.models.items():
            model.to(self.offload_device)
            before = self._before(name)
            self._handles.append(
                model.register_forward_pre_hook(lambda _m, args, kwargs, _b=before: _b(args, kwargs), with_kwargs=True)
            )
            self._wrapped.append((model, _wrap_entry_methods(model, before)))

    def _before(self, name: str) -> Callable[[tuple, dict], tuple[tuple, dict]]:
        def before(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            self.onload(name)
            return to_device(args, self.device), to_device(kwargs, self.device)

        return before

    def onload(self, name: str) -> None:
        """Put model `name` on the accelerator, moving the one there before back to the CPU first."""
        if self.resident == name:
            return
        self.offload()
        with _plain_tensors():
            self.models[name].to(self.device)
        self.resident = name
        self.moves.append((name, "onload"))

    def offload(self) -> None:
        """Move the model on the accelerator (if any) back to the CPU."""
        if self.resident is None:
            return
        name, self.resident = self.resident, None
        with _plain_tensors():
            self.models[name].to(self.offload_device)
        self.moves.append((name, "offload"))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def remove(self) -> None:
        """Remove every hook; the models stay where they are."""
        for handle in self._handles:
            handle.remove()
        for model, names in self._wrapped:
            for name in names:
                model.__dict__.pop(name, None)
        self._handles, self._wrapped, self.resident = [], [], None


class SequentialOffload:
    """Every submodule's own weights (parameters and buffers) live on the CPU and visit `device` for its forward."""

    def __init__(self, models: Mapping[str, nn.Module], device: torch.device):
        self.models = dict(models)
        self.device = torch.device(device)
        self._handles: list[Any] = []
        self._wrapped: list[tuple[nn.Module, list[str]]] = []
        for model in self.models.values():
            model.to("cpu")
            for module in model.modules():
                if next(module.parameters(recurse=False), None) is None and next(module.buffers(False), None) is None:
                    continue
                self._handles.append(module.register_forward_pre_hook(self._onload, with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._offload, always_call=True))
            # a model called through encode/decode still gets its inputs on the accelerator
            self._wrapped.append((model, _wrap_entry_methods(model, self._inputs)))

    def _inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return to_device(args, self.device), to_device(kwargs, self.device)

    def _onload(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # the CPU Parameter objects are set aside and accelerator copies take their place for this forward
        cpu_params = {n: p for n, p in module._parameters.items() if p is not None}
        cpu_buffers = {n: b for n, b in module._buffers.items() if b is not None}
        with _plain_tensors():
            for name, param in cpu_params.items():
                moved = param.detach().to(self.device, non_blocking=True)
                module._parameters[name] = nn.Parameter(moved, requires_grad=param.requires_grad)
            for name, buf in cpu_buffers.items():
                module._buffers[name] = buf.to(self.device, non_blocking=True)
        module.__dict__["_sdxl_cpu_tensors"] = (cpu_params, cpu_buffers)
        return self._inputs(args, kwargs)

    def _offload(self, module: nn.Module, args: tuple, output: Any) -> None:
        saved = module.__dict__.pop("_sdxl_cpu_tensors", None)
        if saved is None:
            return
        cpu_params, cpu_buffers = saved
        module._parameters.update(cpu_params)
        module._buffers.update(cpu_buffers)

    def offload(self) -> None:
        """Nothing stays on the accelerator between forwards; kept for the common interface."""

    def remove(self) -> None:
        """Remove every hook; the weights are on the CPU."""
        for handle in self._handles:
            handle.remove()
        for model, names in self._wrapped:
            for name in names:
                model.__dict__.pop(name, None)
        self._handles, self._wrapped = [], []
