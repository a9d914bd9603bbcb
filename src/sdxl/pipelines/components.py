"""A pipeline's named components and config: registering them, `pipe.config` (read-only), `pipe.components`,
the device and dtype the pipeline computes in, and `pipe.to(device, dtype)`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from sdxl.pipelines.offload import SequentialOffload

if TYPE_CHECKING:  # for the `to` annotation only
    from typing_extensions import Self

logger = logging.getLogger(__name__)


class FrozenConfig(dict):
    """A read-only dict that also reads as attributes (`pipe.config.force_zeros_for_empty_prompt`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"The pipeline config has no key {name!r}; it has {sorted(self)}.") from None

    def _frozen(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("The pipeline config is read-only: change it with `pipe.register_to_config(key=value)`.")

    __setitem__ = __delitem__ = __setattr__ = update = pop = setdefault = clear = _frozen

    def __reduce__(self) -> tuple[type, tuple[dict]]:
        # copy/pickle rebuild from a plain dict instead of setting items one by one
        return (FrozenConfig, (dict(self),))


class ComponentsMixin:
    """Mixed into `DiffusionPipeline`: the components are attributes named by the class's `_component_names`; `to()`
    and `device` also read the CPU offload state (`_offload`, `remove_all_hooks`) of `MemoryOptionsMixin`."""

    def register_components(self, **components: Any) -> None:
        """Set each component as an attribute (`pipe.unet`, ...); plain assignment replaces one later."""
        for name, component in components.items():
            setattr(self, name, component)

    def register_modules(self, **components: Any) -> None:
        """diffusers' name for `register_components` (used by loaders that add a component, e.g. the image encoder)."""
        unknown = sorted(set(components) - set(self._component_names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no components {unknown}; it has {list(self._component_names)}."
            )
        self.register_components(**components)

    def register_to_config(self, **values: Any) -> None:
        """Add or change pipeline config values (`pipe.config`)."""
        self._config = FrozenConfig({**getattr(self, "_config", {"_class_name": type(self).__name__}), **values})

    @property
    def config(self) -> FrozenConfig:
        """The pipeline config: `_class_name`, options such as `force_zeros_for_empty_prompt`, `_name_or_path`."""
        if not hasattr(self, "_config"):
            self.register_to_config()
        return self._config

    @property
    def components(self) -> dict[str, Any]:
        """{name: component} for every component, so `OtherPipeline(**pipe.components)` shares the weights."""
        return {name: getattr(self, name) for name in self._component_names}

    def _modules(self) -> list[torch.nn.Module]:
        return [c for c in self.components.values() if isinstance(c, torch.nn.Module)]

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: the offload accelerator when CPU offload is on, else the first accelerator
        device among the models, else the first model's."""
        offload = getattr(self, "_offload", None)
        if offload is not None:
            return offload.device
        devices = [m.device for m in self._modules()]
        for device in devices:
            if device.type not in ("cpu", "meta"):
                return device
        return devices[0] if devices else torch.device("cpu")

    @property
    def _execution_device(self) -> torch.device:
        # diffusers' name, read by external code written against it
        return self.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype (the first model's when there is no UNet)."""
        unet = getattr(self, "unet", None)
        if isinstance(unet, torch.nn.Module):
            return unet.dtype
        modules = self._modules()
        return modules[0].dtype if modules else torch.float32

    def to(self, *args: Any, **kwargs: Any) -> Self:
        """Move/cast every model: `to(device)`, `to(dtype)`, `to(device, dtype)`, `to(device=..., dtype=...)`.

        Returns the pipeline itself (changed in place), as diffusers does.
        """
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"pipe.to() got unexpected arguments {sorted(kwargs)}; it takes a device and/or a dtype.")
        if len(args) > 2:
            raise ValueError(f"pipe.to() takes at most a device and a dtype, but got {len(args)} arguments.")
        if len(args) == 2 and isinstance(args[0], torch.dtype):
            raise ValueError("pipe.to(a, b) takes the device first and the dtype second.")
        for arg in args:
            if isinstance(arg, torch.dtype):
                if dtype is not None:
                    raise ValueError("The dtype was given both as an argument and as the `dtype` keyword.")
                dtype = arg
            elif arg is not None:
                if device is not None:
                    raise ValueError("The device was given both as an argument and as the `device` keyword.")
                device = arg
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype such as torch.float16, but got {dtype!r}.")
        move = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        offload = getattr(self, "_offload", None)
        if offload is not None and device is not None:
            if isinstance(offload, SequentialOffload) and torch.device(device).type != "cpu":
                raise ValueError(
                    f"pipe.to({str(device)!r}) after enable_sequential_cpu_offload(): the weights are managed by the "
                    "offload hooks. Call pipe.remove_all_hooks() first to place the whole pipeline yourself."
                )
            logger.warning(
                "pipe.to(%s) after enable_*_cpu_offload(): the offload hooks are removed and every model moved; "
                "offloading's memory savings are lost.",
                device,
            )
            self.remove_all_hooks()
        for module in self._modules():
            module.to(**move)
        return self
