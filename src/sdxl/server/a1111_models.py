"""AUTOMATIC1111 request bodies and their translation to `GenerationParams`: the one place A1111's field names meet
the pipelines' arguments.

Clients send what A1111 takes: every field is optional, unknown keys are ignored (extensions' keys, legacy keys),
`null` means the default. Defaults are A1111's (steps 50, CFG 7, sampler Euler, denoising strength 0.75, mask blur
4), except the size: an omitted width/height is the model's own size (A1111 would use 512, wrong for SDXL).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdxl.params import (
    DEFAULT_HIRES_REFINER_PASS,
    SAMPLERS,
    GenerationParams,
    check_hires_refiner_pass,
    find_schedule,
    find_upscaler,
)
from sdxl.server.errors import Invalid

A1111_DEFAULTS = {"steps": 50, "cfg_scale": 7.0, "sampler_name": "Euler", "denoising_strength": 0.75, "mask_blur": 4,
                  "hr_denoising_strength": 0.7, "hr_upscaler": "Latent"}
NO_REFINER = ("", "none", "None")


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
    """`POST /sdapi/v1/txt2img`; `enable_hr` runs the hires fix (`hr_scale` or `hr_resize_x`/`hr_resize_y`,
    `hr_upscaler`, `hr_second_pass_steps`, `denoising_strength`)."""

    enable_hr: bool | None = False
    hr_scale: float | None = Field(2.0, ge=1, le=8)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = Field(0, ge=0)
    hr_resize_x: int | None = Field(0, ge=0)
    hr_resize_y: int | None = Field(0, ge=0)


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
    """`POST /sdapi/v1/options`: A1111 options; the ones we do not have are ignored, as A1111 does. We have the
    checkpoint and `hires_fix_refiner_pass` ("first pass", "second pass" or "both passes")."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None
    hires_fix_refiner_pass: str | None = None


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = ""


def sampler_for(sampler_name: str | None, scheduler: str | None) -> tuple[str, str | None]:
    """(our sampler name, schedule type label or None) for A1111's sampler name and "Schedule type" (name or label).

    A schedule type applies to the k-diffusion samplers that take one; for the others, "Karras" and "Exponential"
    pick our sampler of that name where there is one ("DPM++ 2M" + "Karras" -> "DPM++ 2M Karras", diffusers'
    Karras sigmas); legacy names that already say it ("DPM++ 2M Karras") are taken as they are."""
    from sdxl.server.service import no_schedule_for, sampler_takes_schedules

    name = (sampler_name or A1111_DEFAULTS["sampler_name"]).strip()
    sampler = SAMPLERS.get(name.lower())
    if sampler is None:
        raise Invalid(f"unknown sampler {name!r}; this server has: {', '.join(s.name for s in SAMPLERS.values())}")
    try:
        schedule = find_schedule(scheduler)
    except ValueError as err:
        raise Invalid(str(err)) from None
    if schedule.name == "automatic" or sampler.name.lower().endswith(" " + schedule.name):
        return sampler.name, None
    if sampler_takes_schedules(sampler):
        return sampler.name, schedule.label
    combined = SAMPLERS.get(f"{sampler.name} {schedule.label}".lower())
    if combined is not None:
        return combined.name, None
    raise no_schedule_for(sampler)


def refiner_pass_option(value: Any) -> str:
    """A value of A1111's option `hires_fix_refiner_pass` ("Hires fix: which pass to enable refiner for"), checked
    (Invalid lists the choices)."""
    try:
        return check_hires_refiner_pass(str(value))
    except ValueError as err:
        raise Invalid(str(err).replace("hires_refiner_pass", "hires_fix_refiner_pass", 1)) from None


def hires_refiner_pass_of(request: _Request, option: str) -> str:
    """The refiner pass(es) of a request's hires fix: its `override_settings` value, else the server's option
    `option` (set through /sdapi/v1/options)."""
    return refiner_pass_option((request.override_settings or {}).get("hires_fix_refiner_pass") or option)


def hires_of(request: Txt2ImgRequest, refiner_pass: str = DEFAULT_HIRES_REFINER_PASS) -> dict:
    """The GenerationParams fields of A1111's hires fix ({} when it is off); `refiner_pass` is the option
    `hires_fix_refiner_pass` in force."""
    if not getattr(request, "enable_hr", False):
        return {}
    scale = request.hr_scale or 2.0
    if request.hr_resize_x or request.hr_resize_y:
        if not (request.width and request.height):
            raise Invalid("hr_resize_x/hr_resize_y need the first pass's width and height")
        scales = {round(x / base, 6) for x, base in ((request.hr_resize_x, request.width),
                                                       (request.hr_resize_y, request.height)) if x}
        if len(scales) != 1:
            raise Invalid("hr_resize_x and hr_resize_y must keep the aspect ratio of width and height here "
                          "(cropping to another ratio is not implemented); or use hr_scale")
        scale = scales.pop()
    upscaler = request.hr_upscaler or A1111_DEFAULTS["hr_upscaler"]
    try:
        find_upscaler(upscaler)
    except ValueError as err:
        raise Invalid(str(err)) from None
    strength = request.denoising_strength
    return {
        "hires_scale": scale,
        "hires_upscaler": upscaler,
        "hires_steps": request.hr_second_pass_steps or 0,
        "denoising_strength": strength if strength is not None else A1111_DEFAULTS["hr_denoising_strength"],
        "hires_refiner_pass": refiner_pass,
    }


def to_params(
    request: _Request, *, model: str, image: bool, mask: bool, hires_refiner_pass: str = DEFAULT_HIRES_REFINER_PASS
) -> GenerationParams:
    """The GenerationParams of an A1111 request (`model`: the checkpoint name already chosen; `hires_refiner_pass`:
    the server's option `hires_fix_refiner_pass`, which the request's `override_settings` may override)."""
    if request.script_name:
        raise Invalid(f"script {request.script_name!r} not found: this server has no scripts")
    refiner = request.refiner_checkpoint if request.refiner_checkpoint not in (None, *NO_REFINER) else ""
    sampler, schedule = sampler_for(request.sampler_name or request.sampler_index, request.scheduler)
    fields: dict[str, Any] = dict(
        prompt=request.prompt or "",
        negative_prompt=request.negative_prompt or "",
        steps=request.steps or A1111_DEFAULTS["steps"],
        sampler=sampler,
        schedule=schedule,
        guidance_scale=request.cfg_scale if request.cfg_scale is not None else A1111_DEFAULTS["cfg_scale"],
        seed=request.seed if request.seed is not None else -1,
        width=request.width,
        height=request.height,
        model=model,
        batch_size=(request.batch_size or 1) * (request.n_iter or 1),
        prompt_syntax="a1111",  # A1111 always reads (emphasis:1.2) and [de-emphasis]
        long_prompts=True,
        refiner=refiner,
        refiner_switch_at=(request.refiner_switch_at or 0.8) if refiner else None,
    )
    if request.subseed_strength:
        fields.update(subseed=request.subseed if request.subseed is not None else -1,
                      subseed_strength=request.subseed_strength)
    if image:
        strength = request.denoising_strength
        fields["denoising_strength"] = strength if strength is not None else A1111_DEFAULTS["denoising_strength"]
    else:
        fields.update(hires_of(request, hires_refiner_pass_of(request, hires_refiner_pass)))
    if mask:
        blur = request.mask_blur
        fields["mask_blur"] = blur if blur is not None else A1111_DEFAULTS["mask_blur"]
        if request.inpaint_full_res:
            fields["padding_mask_crop"] = request.inpaint_full_res_padding or 0
    return GenerationParams(**fields)


def echo(request: _Request) -> dict[str, Any]:
    """The request as A1111 echoes it under `parameters` (without the image data)."""
    data = request.model_dump()
    for key in ("init_images", "mask"):
        if key in data:
            data[key] = None
    return data
