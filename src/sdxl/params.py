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
# as the Stable Diffusion configs use it. DDPM and DEIS have no A1111 sampler; they keep their usual names. "LCM" is
# A1111's and ComfyUI's name for Latent Consistency Model sampling.
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
        Sampler("LCM", "LCMScheduler"),  # for LCM-distilled models and LCM-LoRAs: 2-8 steps, CFG 1-2
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
        # a key carried over from another scheduler's config (LCM, DDIM have no sigma schedules) does not count
        fields = getattr(type(config), "field_names", None)
        karras = config.get("use_karras_sigmas") and (fields is None or "use_karras_sigmas" in fields())
        if all(config.get(k) == v for k, v in sampler.options.items()) and not (
            karras and not sampler.options.get("use_karras_sigmas")
        ):
            return sampler.name
    return type(scheduler).__name__


# A1111's option "Hires fix: which pass to enable refiner for" (hires_fix_refiner_pass): its choices, in its order
HIRES_REFINER_PASSES: tuple[str, ...] = ("first pass", "second pass", "both passes")
DEFAULT_HIRES_REFINER_PASS = "second pass"


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
    # A1111's "Schedule type" (a label or name of SCHEDULE_TYPES; None or "Automatic": the sampler's own)
    schedule: str | None = None
    # hires fix (text-to-image): upscale by hires_scale with hires_upscaler (UPSCALERS), then redraw as image-to-image
    # with `denoising_strength` for hires_steps steps (0: `steps`); None: no second pass
    hires_scale: float | None = None
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    # hires fix with a refiner: the pass(es) the refiner takes over at refiner_switch_at (HIRES_REFINER_PASSES)
    hires_refiner_pass: str = DEFAULT_HIRES_REFINER_PASS
    # A1111's variation seed: the noise is slerp(subseed_strength, noise(seed + i), noise(subseed + i))
    subseed: int | None = None
    subseed_strength: float = 0.0


def check_hires_refiner_pass(value: str) -> str:
    """`value` if it is one of A1111's choices (as A1111 spells them), else a ValueError listing them."""
    if value not in HIRES_REFINER_PASSES:
        valid = ", ".join(repr(v) for v in HIRES_REFINER_PASSES)
        raise ValueError(f"hires_refiner_pass must be one of {valid} (got {value!r})")
    return value


def refiner_in_passes(params: GenerationParams) -> tuple[bool, bool]:
    """(refiner in the first pass, refiner in the hires pass): without the hires fix the one pass is the first;
    with it, as A1111's option (default: the hires pass only)."""
    if not params.refiner:
        return False, False
    if params.hires_scale is None:
        return True, False
    choice = params.hires_refiner_pass
    return choice in ("first pass", "both passes"), choice in ("second pass", "both passes")


@dataclass(frozen=True)
class ScheduleType:
    """One entry of A1111's "Schedule type" menu, as its `/sdapi/v1/schedulers` lists it.

    `name` is what `Scheduler.set_schedule_type` takes (schedulers/schedule_types.py); `label` is what the menu
    shows and the PNG metadata records ("Schedule type: Karras"); `default_rho` is -1 where the schedule takes no
    rho; `need_inner_model` marks the schedules computed from the model's training sigmas.
    """

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False

    def to_api(self) -> dict:
        """The `/sdapi/v1/schedulers` item (aliases as a list, or None)."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) or None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


# A1111 1.10's modules/sd_schedulers.py, in its order. "Automatic" is each sampler's own schedule (here: the
# scheduler's diffusers config); the rest replace its noise levels (k-diffusion samplers only).
SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True),
    ScheduleType("kl_optimal", "KL Optimal"),
    ScheduleType("align_your_steps", "Align Your Steps"),
    ScheduleType("simple", "Simple", need_inner_model=True),
    ScheduleType("normal", "Normal", need_inner_model=True),
    ScheduleType("ddim", "DDIM", need_inner_model=True),
    ScheduleType("beta", "Beta", need_inner_model=True),
)


def find_schedule(name: str | None) -> ScheduleType:
    """A schedule type by name, label or alias (case-insensitive); None or "" is Automatic."""
    if not name:
        return SCHEDULE_TYPES[0]
    key = name.strip().lower()
    for schedule in SCHEDULE_TYPES:
        if key in (schedule.name, schedule.label.lower(), *(a.lower() for a in schedule.aliases)):
            return schedule
    valid = ", ".join(repr(s.label) for s in SCHEDULE_TYPES)
    raise ValueError(f"unknown schedule type {name!r}; choose one of: {valid}")


@dataclass(frozen=True)
class Upscaler:
    """A hires-fix upscaler as A1111 names it: the latents resized by torch (`mode`, `antialias`), or the decoded
    image resized by PIL (`mode` "lanczos" or "nearest") and encoded again."""

    name: str
    space: str  # "latent" or "image"
    mode: str
    antialias: bool = False


# A1111's latent upscale modes (shared.latent_upscale_modes) and its two PIL upscalers, in its menu's order
UPSCALERS: tuple[Upscaler, ...] = (
    Upscaler("Latent", "latent", "bilinear"),
    Upscaler("Latent (antialiased)", "latent", "bilinear", antialias=True),
    Upscaler("Latent (bicubic)", "latent", "bicubic"),
    Upscaler("Latent (bicubic antialiased)", "latent", "bicubic", antialias=True),
    Upscaler("Latent (nearest)", "latent", "nearest"),
    Upscaler("Latent (nearest-exact)", "latent", "nearest-exact"),
    Upscaler("Lanczos", "image", "lanczos"),
    Upscaler("Nearest", "image", "nearest"),
)


def find_upscaler(name: str) -> Upscaler:
    """A hires upscaler by its A1111 name (case-insensitive)."""
    for upscaler in UPSCALERS:
        if upscaler.name.lower() == name.strip().lower():
            return upscaler
    valid = ", ".join(repr(u.name) for u in UPSCALERS)
    raise ValueError(f"unknown hires upscaler {name!r}; choose one of: {valid}")
