"""Scheduler classes by diffusers' name: what `compatibles` lists and how `scheduler_class` finds a class.

Modules are imported on first lookup, so `import sdxl.schedulers.base` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdxl.schedulers.base import Scheduler

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
MODULES: dict[str, str] = {
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
    "EDMEulerScheduler": "sdxl.schedulers.edm_euler",
    "EDMDPMSolverMultistepScheduler": "sdxl.schedulers.edm_dpm_multistep",
    "LCMScheduler": "sdxl.schedulers.lcm",
}
CLASSES: dict[str, type[Scheduler]] = {}  # filled by Scheduler.__init_subclass__


def register_scheduler_module(name: str, module: str) -> None:
    """Make scheduler class `name`, defined in `module`, findable by `scheduler_class` and `compatibles`."""
    MODULES[name] = module


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class called `name` (diffusers' class name), importing its module if needed."""
    if name not in CLASSES and name in MODULES:
        importlib.import_module(MODULES[name])
    if name not in CLASSES:
        known = sorted(set(CLASSES) | set(MODULES))
        raise ValueError(f"unknown scheduler {name!r}; available schedulers: {known}")
    return CLASSES[name]
