"""One description of a generation, shared by the command line, PNG metadata and (later) the server."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    """A sampler name users know (AUTOMATIC1111/ComfyUI) mapped to a scheduler class and its options."""

    name: str
    scheduler: str  # class name exported by `sdxl`
    options: dict = field(default_factory=dict)


# Names as AUTOMATIC1111 writes them in its `parameters` text. Later issues extend this table.
SAMPLERS: dict[str, Sampler] = {
    s.name.lower(): s
    for s in (
        Sampler("Euler", "EulerDiscreteScheduler"),
        Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        Sampler(
            "DPM++ 2M Karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
    )
}


def find_sampler(name: str) -> Sampler:
    """Look a sampler up by its user-facing name (case-insensitive); a clear error lists the valid ones."""
    sampler = SAMPLERS.get(name.strip().lower())
    if sampler is None:
        valid = ", ".join(repr(s.name) for s in SAMPLERS.values())
        raise ValueError(f"unknown sampler {name!r}; choose one of: {valid}")
    return sampler


@dataclass(frozen=True)
class GenerationParams:
    """Everything that determines one generated image (what A1111 records in its `parameters` chunk)."""

    prompt: str
    negative_prompt: str = ""
    prompt_2: str | None = None
    steps: int = 30
    sampler: str = "Euler"
    guidance_scale: float = 5.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    model: str = ""
