"""AUTOMATIC1111 request bodies and their translation to `GenerationParams`: the one place A1111's field names meet
the pipelines' arguments.

Clients send what A1111 takes: every field is optional, unknown keys are ignored (extensions' keys, legacy keys),
`null` means the default. Defaults are A1111's (steps 50, CFG 7, sampler Euler, denoising strength 0.75, mask blur
4), except the size: an omitted width/height is the model's own size (A1111 would use 512, wrong for SDXL).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdxl.params import SAMPLERS, GenerationParams
from sdxl.server.errors import Invalid

A1111_DEFAULTS = {"steps": 50, "cfg_scale": 7.0, "sampler_name": "Euler", "denoising_strength": 0.75, "mask_blur": 4}
NO_REFINER = ("", "none", "None")

# A1111's "Schedule type" menu names (lower case) and labels -> the suffix our sampler names carry for it
_SCHEDULE_SUFFIXES = {"automatic": "", "karras": " Karras", "exponential": " Exponential"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = Field(-1, ge=-1, lt=2**32)
    subseed: int | None = Field(-1, ge=-1, lt=2**32)
    subseed_strength: float | None = Field(0.0, ge=0, le=1)
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int | None = Field(1, ge=1)
    n_iter: int | None = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    override_settings: dict[str, Any] | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(None, gt=0, lt=1)
    send_images: bool | None = True
    save_images: bool | None = False
    script_name: str | None = None


class Txt2ImgRequest(_Request):
    """`POST /sdapi/v1/txt2img`."""

    enable_hr: bool | None = False


class Img2ImgRequest(_Request):
    """`POST /sdapi/v1/img2img`: `init_images` (base64, with or without a data: prefix), inpainting with `mask`."""

    init_images: list[str] | None = None
    resize_mode: int | None = Field(0, ge=0, le=3)
    mask: str | None = None
    mask_blur: int | None = Field(None, ge=0, le=256)
    inpainting_fill: int | None = Field(1, ge=0, le=3)
    inpaint_full_res: bool | int | None = False
    inpaint_full_res_padding: int | None = Field(32, ge=0, le=4096)
    inpainting_mask_invert: int | None = Field(0, ge=0, le=1)
    include_init_images: bool | None = False


class OptionsUpdate(BaseModel):
    """`POST /sdapi/v1/options`: A1111 options; the ones we do not have are ignored, as A1111 does."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = ""


def sampler_for(sampler_name: str | None, scheduler: str | None) -> str:
    """Our sampler name for A1111's sampler name and "Schedule type" (name or label; Automatic keeps the
    sampler's own schedule). Invalid names the sampler names we have."""
    name = (sampler_name or A1111_DEFAULTS["sampler_name"]).strip()
    schedule = (scheduler or "automatic").strip().lower()
    if schedule not in _SCHEDULE_SUFFIXES:
        raise Invalid(f"unknown scheduler {scheduler!r}; this server has: {', '.join(_SCHEDULE_SUFFIXES)}")
    suffix = _SCHEDULE_SUFFIXES[schedule].lower()
    key = name.lower()
    if key not in SAMPLERS:
        raise Invalid(f"unknown sampler {name!r}; this server has: {', '.join(s.name for s in SAMPLERS.values())}")
    if not suffix or key.endswith(suffix):  # "DPM++ 2M Karras": the legacy name already says it
        return SAMPLERS[key].name
    if key + suffix in SAMPLERS:
        return SAMPLERS[key + suffix].name
    raise Invalid(f"the sampler {name!r} has no {scheduler!r} schedule here; use scheduler 'automatic'")


def to_params(request: _Request, *, model: str, image: bool, mask: bool) -> GenerationParams:
    """The GenerationParams of an A1111 request (`model`: the checkpoint name already chosen)."""
    if request.script_name:
        raise Invalid(f"script {request.script_name!r} not found: this server has no scripts")
    refiner = request.refiner_checkpoint if request.refiner_checkpoint not in (None, *NO_REFINER) else ""
    strength = request.denoising_strength if request.denoising_strength is not None else (
        A1111_DEFAULTS["denoising_strength"])
    blur = getattr(request, "mask_blur", None)
    full_res = bool(getattr(request, "inpaint_full_res", False))
    return GenerationParams(
        prompt=request.prompt or "",
        negative_prompt=request.negative_prompt or "",
        steps=request.steps or A1111_DEFAULTS["steps"],
        sampler=sampler_for(request.sampler_name or request.sampler_index, request.scheduler),
        guidance_scale=request.cfg_scale if request.cfg_scale is not None else A1111_DEFAULTS["cfg_scale"],
        seed=request.seed if request.seed is not None else -1,
        width=request.width,
        height=request.height,
        model=model,
        batch_size=(request.batch_size or 1) * (request.n_iter or 1),
        prompt_syntax="a1111",  # A1111 always reads (emphasis:1.2) and [de-emphasis]
        long_prompts=True,
        denoising_strength=strength if image else None,
        mask_blur=(blur if blur is not None else A1111_DEFAULTS["mask_blur"]) if mask else None,
        padding_mask_crop=(request.inpaint_full_res_padding or 0) if mask and full_res else None,
        refiner=refiner,
        refiner_switch_at=(request.refiner_switch_at or 0.8) if refiner else None,
    )


def echo(request: _Request) -> dict[str, Any]:
    """The request as A1111 echoes it under `parameters` (without the image data)."""
    data = request.model_dump()
    for key in ("init_images", "mask"):
        if key in data:
            data[key] = None
    return data
