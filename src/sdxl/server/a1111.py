"""The AUTOMATIC1111-compatible API, `/sdapi/v1/...`, as the `webuiapi` and `aaa1111` clients drive it.

txt2img and img2img go through the same queue as native jobs (they show in the history) and answer when their job
ends, with A1111's response shape: `images` (raw base64 PNGs with the `parameters` chunk), `parameters` (the request
echoed) and `info` (a JSON string with all_seeds, infotexts and the rest).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter

from sdxl.metadata import parse_parameters
from sdxl.params import SAMPLERS, SCHEDULE_TYPES, UPSCALERS
from sdxl.server.a1111_models import (
    Img2ImgRequest,
    OptionsUpdate,
    PngInfoRequest,
    Txt2ImgRequest,
    echo,
    refiner_pass_option,
    to_params,
)
from sdxl.server.errors import ApiError, Conflict, Invalid
from sdxl.server.images import decode_image, encode_png, has_alpha, open_image, upright
from sdxl.server.service import Service
from sdxl.server.store import CANCELLED, DONE, FINISHED, QUEUED, Job
from sdxl.server.worker import BAD_OUTPUT, INPUT_ERROR, OUT_OF_MEMORY

WAIT_POLL_SECONDS = 0.05
_CORE_INFOTEXT_KEYS = {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"}
# the statuses a failed synchronous job answers with, by why it failed
_FAILURE_STATUS = {INPUT_ERROR: 422, OUT_OF_MEMORY: 503, BAD_OUTPUT: 500}


def build_router(service: Service) -> APIRouter:
    """The /sdapi/v1 routes over `service`."""
    router = APIRouter(prefix="/sdapi/v1", tags=["automatic1111"])
    limits = service.limits

    def checkpoint_for(request: Any) -> str:
        override = (request.override_settings or {}).get("sd_model_checkpoint")
        if override:
            service.check_model(str(override))
            return service.catalog.resolve(str(override)).name
        return service.default_model

    @router.post("/txt2img", summary="Text to image (waits for the job; A1111's response shape)")
    async def txt2img(body: Txt2ImgRequest) -> dict:
        params = to_params(
            body, model=checkpoint_for(body), image=False, mask=False, hires_refiner_pass=service.hires_refiner_pass
        )
        job = service.submit("a1111", params, {})
        return await _respond(service, job, body, extra_images=[])

    @router.post("/img2img", summary="Image to image, and inpainting with `mask` (waits for the job)")
    async def img2img(body: Img2ImgRequest) -> dict:
        if not body.init_images:
            raise Invalid("img2img needs `init_images`: a list with one base64 image")
        image = decode_image(body.init_images[0], field="init_images[0]", max_pixels=limits.max_image_pixels)
        inputs = {"image": image}
        if body.mask:
            mask = decode_mask(body.mask, max_pixels=limits.max_image_pixels)
            if mask.size != image.size:
                raise Invalid(f"the mask is {mask.width}x{mask.height} but init_images[0] is "
                              f"{image.width}x{image.height}; send a mask of the image's size")
            if body.inpainting_mask_invert:
                from PIL import ImageOps

                mask = ImageOps.invert(mask)
            inputs["mask"] = mask
        inputs = {k: _resize(v, body) for k, v in inputs.items()}
        params = to_params(body, model=checkpoint_for(body), image=True, mask="mask" in inputs)
        job = service.submit("a1111", params, inputs)
        extra = [encode_png(image)] if body.include_init_images else []
        return await _respond(service, job, body, extra_images=extra)

    @router.get("/progress", summary="The running job's progress and live preview")
    def progress(skip_current_image: bool = False) -> dict:
        job_id = service.worker.current
        live = service.board.get(job_id) if job_id else None
        waiting = service.store.count(QUEUED)
        state = {
            "skipped": False,
            "interrupted": service.worker.stopping_early(job_id),
            "stopping_generation": False,
            "job": f"job({job_id})" if job_id else "",
            "job_count": waiting + (1 if job_id else 0),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(live.started if live else time.time())),
            "job_no": 0,
            "sampling_step": live.step if live else 0,
            "sampling_steps": live.total if live else 0,
        }
        image = None
        if live is not None and live.preview is not None and not skip_current_image:
            import base64

            image = base64.b64encode(live.preview).decode("ascii")
        return {
            "progress": round(live.fraction, 4) if live else 0.0,
            "eta_relative": round(live.eta(), 3) if live else 0.0,
            "state": state,
            "current_image": image,
            "textinfo": None,
        }

    @router.post("/interrupt", summary="Stop the running job's denoising; it returns what it has")
    def interrupt() -> dict:
        service.worker.stop_early()
        return {}

    @router.post("/skip", summary="As interrupt: this server runs a batch as one job")
    def skip() -> dict:
        service.worker.stop_early()
        return {}

    @router.get("/sd-models", summary="The checkpoints this server can load")
    def sd_models() -> list[dict]:
        return [
            {"title": e.title, "model_name": e.name.removesuffix(".safetensors"), "hash": None, "sha256": None,
             "filename": e.name, "config": None}
            for e in service.catalog.entries()
        ]

    @router.get("/samplers", summary="Sampler names (option values are strings)")
    def samplers() -> list[dict]:
        return [
            {"name": s.name, "aliases": [s.scheduler], "options": {k: str(v) for k, v in s.options.items()}}
            for s in SAMPLERS.values()
        ]

    @router.get("/schedulers", summary="Schedule types")
    def schedulers() -> list[dict]:
        return [schedule.to_api() for schedule in SCHEDULE_TYPES]

    @router.get("/upscalers", summary="Hires-fix upscalers that work on decoded images")
    def upscalers() -> list[dict]:
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}] + [
            {"name": u.name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for u in UPSCALERS if u.space == "image"
        ]

    @router.get("/latent-upscale-modes", summary="Hires-fix upscalers that work on latents")
    def latent_upscale_modes() -> list[dict]:
        return [{"name": u.name} for u in UPSCALERS if u.space == "latent"]

    @router.get("/options", summary="Options; sd_model_checkpoint is the current model")
    def get_options() -> dict:
        return {
            "sd_model_checkpoint": service.catalog.resolve(service.default_model).title,
            "sd_checkpoint_hash": None,
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
            "eta_noise_seed_delta": 0,
            "live_previews_enable": service.config.preview_every > 0,
            "show_progress_every_n_steps": service.config.preview_every,
            "hires_fix_refiner_pass": service.hires_refiner_pass,
        }

    @router.post(
        "/options",
        summary="Set options: sd_model_checkpoint switches the model by title or name, hires_fix_refiner_pass picks "
        "the hires fix's refiner pass(es)",
    )
    def set_options(body: OptionsUpdate) -> None:
        refiner_pass = None
        if body.hires_fix_refiner_pass is not None:  # checked before anything changes
            refiner_pass = refiner_pass_option(body.hires_fix_refiner_pass)
        if body.sd_model_checkpoint:
            service.check_model(body.sd_model_checkpoint)
            service.default_model = service.catalog.resolve(body.sd_model_checkpoint).name
        if refiner_pass is not None:
            service.hires_refiner_pass = refiner_pass

    @router.get("/cmd-flags", summary="How the server was started (never the token)")
    def cmd_flags() -> dict:
        config = service.config
        return {
            "api": True,
            "listen": config.host not in ("127.0.0.1", "localhost", "::1"),
            "server_name": config.host,
            "port": config.port,
            "ckpt": config.model,
            "ckpt_dir": str(config.models_dir) if config.models_dir else None,
            "data_dir": str(config.data_dir),
            "device": str(service.runner.device),
            "dtype": str(service.runner.dtype).removeprefix("torch."),
            "api_auth": "<set>" if config.token else None,
            "nowebui": False,
        }

    @router.get("/scripts", summary="Scripts (none)")
    def scripts() -> dict:
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info", summary="Scripts (none)")
    def script_info() -> list:
        return []

    @router.post("/png-info", summary="Read the `parameters` text of a PNG")
    def png_info(body: PngInfoRequest) -> dict:
        image = open_image(body.image, field="image", max_pixels=limits.max_image_pixels)
        text = image.info.get("parameters")
        items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
        if text:
            items["parameters_parsed"] = json.dumps(parse_parameters(text))
        return {"info": text or "", "items": items}

    @router.get("/memory", summary="RAM and GPU memory")
    def memory() -> dict:
        return _memory()

    @router.post("/refresh-checkpoints", summary="Rescan the models folder (it is read on every request)")
    def refresh_checkpoints() -> None:
        return None

    # lists A1111 clients read at start-up: this server has none of these
    @router.get("/loras", summary="LoRA files in --lora-dir (apply with <lora:NAME:WEIGHT> in the prompt)")
    def loras() -> list[dict]:
        root = service.loras.lora_dir
        return [{"name": name, "alias": name, "path": str(path.relative_to(root)), "metadata": {}}
                for name, path in service.loras.entries().items()]

    @router.post("/refresh-loras", summary="Rescan the LoRA folder (it is read on every request)")
    def refresh_loras() -> None:
        return None

    for path in ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles",
                 "sd-modules"):
        router.add_api_route(f"/{path}", _empty_list, methods=["GET"], summary="(none on this server)")

    @router.get("/embeddings", summary="Textual inversion embeddings (none loaded)")
    def embeddings() -> dict:
        return {"loaded": {}, "skipped": {}}

    return router


def _empty_list() -> list:
    return []


def decode_mask(text: str, *, max_pixels: int):
    """An A1111 mask: the alpha channel when the image has transparency, else its grey levels; binarised at 128 as
    A1111 does. Returns an "L" image (white = redraw)."""
    image = upright(open_image(text, field="mask", max_pixels=max_pixels))
    grey = image.convert("RGBA").split()[-1] if has_alpha(image) else image.convert("L")
    return grey.point(lambda v: 255 if v > 128 else 0)


def _resize(image, request: Img2ImgRequest):
    """A1111 resizes the input (and mask) to the request's size: 0 stretch, 1 crop, 2 fill, 3 (latent) as 0."""
    from sdxl.image_mask import resize_pil

    width, height = request.width or image.width, request.height or image.height
    if (width, height) == image.size:
        return image
    mode = {1: "crop", 2: "fill"}.get(request.resize_mode or 0, "default")
    return resize_pil(image, width, height, mode)


async def _respond(service: Service, job: Job, request: Any, *, extra_images: list[str]) -> dict:
    job = await _wait(service, job.id)
    if job.state == CANCELLED:
        raise Conflict(f"the job was cancelled ({job.error})")
    if job.state != DONE:
        kind = job.result.get("error_kind")
        raise ApiError(job.error or "the job failed", status=_FAILURE_STATUS.get(kind, 500))
    images_info = job.result.get("images", [])
    images = [encode_png(service.data.image(job.id, i)) for i in range(len(images_info))] if (
        request.send_images is not False) else []
    return {"images": images + extra_images, "parameters": echo(request), "info": json.dumps(_info(job, request))}


async def _wait(service: Service, job_id: str) -> Job:
    while True:
        job = service.job(job_id)
        if job.state in FINISHED:
            return job
        await asyncio.sleep(WAIT_POLL_SECONDS)


def _info(job: Job, request: Any) -> dict:
    """A1111's `info` object for a finished job."""
    images = job.result.get("images", [])
    first = images[0] if images else job.request["params"]
    seeds = [i["seed"] for i in images]
    count = len(images)
    # what the infotext records beyond A1111's core fields (refiner, hires fix, schedule type, ...)
    settings = parse_parameters(first["infotext"]) if images else {}
    extra = {k: v for k, v in settings.items() if k not in _CORE_INFOTEXT_KEYS}
    return {
        "prompt": first["prompt"],
        "all_prompts": [first["prompt"]] * count,
        "negative_prompt": first["negative_prompt"],
        "all_negative_prompts": [first["negative_prompt"]] * count,
        "seed": seeds[0] if seeds else None,
        "all_seeds": seeds,
        "subseed": request.subseed if request.subseed not in (None, -1) else (seeds[0] if seeds else -1),
        "all_subseeds": seeds,
        "subseed_strength": request.subseed_strength or 0.0,
        "width": first["width"],
        "height": first["height"],
        "sampler_name": first["sampler"],
        "scheduler": first.get("schedule") or "Automatic",
        "cfg_scale": first["guidance_scale"],
        "steps": first["steps"],
        "batch_size": request.batch_size or 1,
        "n_iter": request.n_iter or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": first["model"],
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": first.get("denoising_strength"),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [i["infotext"] for i in images],
        "styles": request.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "interrupted": job.result.get("interrupted", False),
        "version": "sdxl",
    }


def _memory() -> dict:
    import os

    import torch

    ram = {}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        available = os.sysconf("SC_AVPHYS_PAGES")
        ram = {"total": pages * size, "free": available * size, "used": (pages - available) * size}
    except (ValueError, OSError, AttributeError):
        ram = {"error": "not available on this system"}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "no CUDA device"}}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    return {
        "ram": ram,
        "cuda": {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {"current": stats.get("active_bytes.all.current", 0), "peak": stats.get("active_bytes.all.peak", 0)},
            "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
            "reserved": {"current": torch.cuda.memory_reserved(), "peak": torch.cuda.max_memory_reserved()},
            "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                         "peak": stats.get("inactive_split_bytes.all.peak", 0)},
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        },
    }

