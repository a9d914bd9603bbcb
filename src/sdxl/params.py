"""One description of a generation, shared by the command line, PNG metadata and (later) the server."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    """A sampler name users know (AUTOMATIC1111/ComfyUI) mapped to a scheduler class and its options."""

    name: str
    scheduler: str  # class name exported by `sdxl`
    options: dict = field(default_factory=dict)


_KARRAS = {"use_karras_sigmas": True}
_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPM_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_DPM_2S = {"algorithm_type": "dpmsolver++", "solver_order": 2}

# Names as AUTOMATIC1111 writes them in its `parameters` text, mapped as diffusers' scheduler overview does
# ("A1111/k-diffusion -> Diffusers"). A1111's "DPM++ 2S a" has no exact diffusers equivalent (it is ancestral);
# DPMSolverSinglestepScheduler, the closest, is listed as "DPM++ 2S". "PLMS" is PNDM without Runge-Kutta warm-up,
# as the Stable Diffusion configs use it. DDPM and DEIS have no A1111 sampler; they keep their usual names.
SAMPLERS: dict[str, Sampler] = {
    s.name.lower(): s
    for s in (
        Sampler("Euler", "EulerDiscreteScheduler"),
        Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
        Sampler("Heun", "HeunDiscreteScheduler"),
        Sampler("LMS", "LMSDiscreteScheduler"),
        Sampler("LMS Karras", "LMSDiscreteScheduler", {**_KARRAS}),
        Sampler("DPM2", "KDPM2DiscreteScheduler"),
        Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", {**_KARRAS}),
        Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {**_KARRAS}),
        Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {**_DPM_2M}),
        Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPM_2M, **_KARRAS}),
        # before plain "DPM++ 2M SDE": the first entry whose options a config has names it in PNG metadata
        Sampler(
            "DPM++ 2M SDE Exponential", "DPMSolverMultistepScheduler", {**_DPM_2M_SDE, "use_exponential_sigmas": True}
        ),
        Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_DPM_2M_SDE}),
        Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_DPM_2M_SDE, **_KARRAS}),
        Sampler("DPM++ 2S", "DPMSolverSinglestepScheduler", {**_DPM_2S}),
        Sampler("DPM++ 2S Karras", "DPMSolverSinglestepScheduler", {**_DPM_2S, **_KARRAS}),
        Sampler("DPM++ SDE", "DPMSolverSDEScheduler"),
        Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", {**_KARRAS}),
        Sampler("DDIM", "DDIMScheduler"),
        Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        Sampler("UniPC", "UniPCMultistepScheduler"),
        Sampler("DDPM", "DDPMScheduler"),
        Sampler("DEIS", "DEISMultistepScheduler"),
    )
}


def find_sampler(name: str) -> Sampler:
    """Look a sampler up by its user-facing name (case-insensitive); a clear error lists the valid ones."""
    sampler = SAMPLERS.get(name.strip().lower())
    if sampler is None:
        valid = ", ".join(repr(s.name) for s in SAMPLERS.values())
        raise ValueError(f"unknown sampler {name!r}; choose one of: {valid}")
    return sampler


def sampler_name(scheduler) -> str:
    """The A1111 name of a scheduler object, for the metadata (the class name when it has none)."""
    config = scheduler.config
    for sampler in SAMPLERS.values():
        if type(scheduler).__name__ != sampler.scheduler:
            continue
        if all(config.get(k) == v for k, v in sampler.options.items()) and not (
            config.get("use_karras_sigmas") and not sampler.options.get("use_karras_sigmas")
        ):
            return sampler.name
    return type(scheduler).__name__


@dataclass(frozen=True)
class GenerationParams:
    """Everything that determines a generation (what A1111 records in its `parameters` chunk).

    A request leaves `seed` (None or -1: random), `width`/`height` (the model's size, or the input image's) and
    `sampler` (the model's own scheduler) open; the images a run returns carry the values that were used, one seed
    each (`seed`, `seed + 1`, ... for a batch).
    """

    prompt: str
    negative_prompt: str = ""
    prompt_2: str | None = None
    steps: int = 30
    sampler: str | None = "Euler"
    guidance_scale: float = 5.0
    seed: int | None = 0
    width: int | None = 1024
    height: int | None = 1024
    model: str = ""
    batch_size: int = 1
    # prompt weighting ("a1111", "compel" or None) and windowed encoding of prompts past 77 tokens
    prompt_syntax: str | None = None
    long_prompts: bool = True
    # image-to-image / inpainting: how much of the schedule re-noises the input (A1111 "Denoising strength")
    denoising_strength: float | None = None
    mask_blur: int | None = None
    # inpainting: redraw only a crop around the mask, padded by this many pixels (A1111 "Masked area padding")
    padding_mask_crop: int | None = None
    # base + refiner ensemble: the refiner's name and the fraction of the schedule where it takes over
    refiner: str = ""
    refiner_switch_at: float | None = None
    # LoRAs besides the prompt's <lora:NAME:WEIGHT> tags: (name in the LoRA folder, or file path; weight)
    loras: tuple[tuple[str, float], ...] = ()
    # what a run used, for the PNG metadata: (name, A1111 short hash) of every LoRA applied
    lora_hashes: tuple[tuple[str, str], ...] = ()
