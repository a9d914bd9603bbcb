"""The native JSON API, `/v1/...`: queue jobs, follow them (polling or Server-Sent Events), fetch their images."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sdxl.params import (
    DEFAULT_HIRES_REFINER_PASS,
    HIRES_REFINER_PASSES,
    SAMPLERS,
    SCHEDULE_TYPES,
    UPSCALERS,
    GenerationParams,
)
from sdxl.server.errors import Invalid, NotFound
from sdxl.server.images import decode_image
from sdxl.server.service import PROMPT_SYNTAXES, Service
from sdxl.server.store import FINISHED

DEFAULT_IMG2IMG_STRENGTH = 0.75  # A1111's default denoising strength
SSE_POLL_SECONDS = 0.1
SSE_KEEPALIVE_SECONDS = 10.0


class JobRequest(BaseModel):
    """A generation: text-to-image, or image-to-image with `image`, or inpainting with `image` and `mask`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(..., description="what to draw")
    negative_prompt: str = Field("", description="what to steer away from")
    prompt_2: str | None = Field(None, description="prompt for the second text encoder (default: the prompt)")
    model: str | None = Field(None, description="a name from GET /v1/capabilities (default: the server's model)")
    image: str | None = Field(None, description="input image, base64 (or a data: URL): image-to-image")
    mask: str | None = Field(None, description="mask image, base64, same size as `image`: white is redrawn")
    strength: float | None = Field(None, ge=0, le=1, description="how much to change the input image (default 0.75)")
    mask_blur: int = Field(0, ge=0, le=256, description="blur of the mask edge in pixels")
    padding_mask_crop: int | None = Field(None, ge=0, le=4096, description="inpaint only a crop around the mask")
    refiner: str | None = Field(None, description="a refiner model name: the ensemble of experts")
    refiner_switch_at: float = Field(0.8, gt=0, lt=1, description="fraction of the schedule the base runs")
    sampler: str | None = Field(None, description="sampler name as A1111 spells it (default: the model's)")
    schedule: str | None = Field(None, description="A1111 schedule type for k-diffusion samplers (default: Automatic)")
    hires_scale: float | None = Field(None, ge=1, le=8, description="hires fix: upscale factor of a second pass")
    hires_upscaler: str = Field("Latent", description="hires fix upscaler (GET /v1/capabilities lists them)")
    hires_steps: int = Field(0, ge=0, description="hires fix steps (0: as many as `steps`)")
    hires_strength: float = Field(0.5, gt=0, le=1, description="hires fix denoising strength")
    hires_refiner_pass: str = Field(
        DEFAULT_HIRES_REFINER_PASS,
        description="hires fix with a refiner: the pass(es) it takes over in: first pass, second pass or both passes "
        "(as A1111's option)",
    )
    subseed: int | None = Field(None, ge=-1, lt=2**32, description="variation seed (-1: random)")
    subseed_strength: float = Field(0.0, ge=0, le=1, description="how far towards the variation seed's noise")
    loras: list[tuple[str, float]] = Field([], max_length=16,
                                           description="[[name, weight], ...] from GET /v1/capabilities' loras")
    seed: int | None = Field(None, ge=-1, lt=2**32, description="-1 or null: random; the seed used is reported")
    width: int | None = Field(None, ge=8, description="multiple of 8 (default: the model's size)")
    height: int | None = Field(None, ge=8, description="multiple of 8 (default: the model's size)")
    steps: int = Field(30, ge=1)
    guidance_scale: float = Field(5.0, ge=0, le=100)
    prompt_syntax: Literal["none", "a1111", "compel"] = "none"
    long_prompts: bool = True
    batch_size: int = Field(1, ge=1)

    def to_params(self, default_model: str) -> GenerationParams:
        """The request as GenerationParams (image-to-image fields only with an image, inpainting ones with a mask,
        hires fields with `hires_scale`)."""
        fields = dict(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            prompt_2=self.prompt_2,
            steps=self.steps,
            sampler=self.sampler,
            schedule=self.schedule,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            width=self.width,
            height=self.height,
            model=self.model or default_model,
            batch_size=self.batch_size,
            prompt_syntax=None if self.prompt_syntax == "none" else self.prompt_syntax,
            long_prompts=self.long_prompts,
            refiner=self.refiner or "",
            refiner_switch_at=self.refiner_switch_at if self.refiner else None,
            loras=tuple((name, float(weight)) for name, weight in self.loras),
        )
        if self.subseed_strength:
            fields.update(subseed=self.subseed, subseed_strength=self.subseed_strength)
        if self.hires_scale is not None:  # (refused for image inputs by the checks, with the reason)
            fields.update(hires_scale=self.hires_scale, hires_upscaler=self.hires_upscaler,
                          hires_steps=self.hires_steps, denoising_strength=self.hires_strength,
                          hires_refiner_pass=self.hires_refiner_pass)
        if self.image is not None:
            fields["denoising_strength"] = self.strength if self.strength is not None else DEFAULT_IMG2IMG_STRENGTH
        if self.mask is not None:
            fields.update(mask_blur=self.mask_blur, padding_mask_crop=self.padding_mask_crop)
        return GenerationParams(**fields)


def build_router(service: Service) -> APIRouter:
    """The /v1 routes over `service`."""
    router = APIRouter(prefix="/v1", tags=["native"])
    limits = service.limits

    @router.post("/jobs", status_code=202, summary="Queue a generation; returns at once with its id and position")
    def create_job(body: JobRequest) -> dict:
        inputs = {}
        if body.image is not None:
            inputs["image"] = decode_image(body.image, field="image", max_pixels=limits.max_image_pixels)
        if body.mask is not None:
            if body.image is None:
                raise Invalid("`mask` needs an `image` to inpaint; send both")
            inputs["mask"] = decode_image(body.mask, field="mask", max_pixels=limits.max_image_pixels)
        job = service.submit("native", body.to_params(service.default_model), inputs)
        return {
            "id": job.id,
            "state": job.state,
            "position": service.store.position(job),
            "url": f"/v1/jobs/{job.id}",
            "events_url": f"/v1/jobs/{job.id}/events",
        }

    @router.get("/jobs", summary="Job history, newest first, paged")
    def list_jobs(
        offset: int = Query(0, ge=0, le=10**9),
        limit: int = Query(20, ge=1, le=200),
        state: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
    ) -> dict:
        jobs, total = service.store.list(offset=offset, limit=limit, state=state)
        return {"jobs": [service.describe(j) for j in jobs], "total": total, "offset": offset, "limit": limit}

    @router.get("/jobs/{job_id}", summary="A job's state, progress, timings, error and images")
    def get_job(job_id: str) -> dict:
        return service.describe(service.job(job_id))

    @router.post("/jobs/{job_id}/cancel", summary="Cancel: a queued job never starts, a running one stops")
    def cancel_job(job_id: str) -> dict:
        return service.describe(service.cancel(job_id))

    @router.get("/jobs/{job_id}/images/{index}", summary="An image as PNG, with A1111's `parameters` chunk",
                response_class=FileResponse)
    def get_image(job_id: str, index: int) -> FileResponse:
        return FileResponse(service.image_path(job_id, index), media_type="image/png")

    @router.get("/jobs/{job_id}/preview", summary="The latest live preview of a running job (PNG)")
    def get_preview(job_id: str) -> Response:
        service.job(job_id)
        live = service.board.get(job_id)
        if live is None or live.preview is None:
            raise NotFound(f"job {job_id} has no preview now (it is not running, or no step has finished yet)")
        return Response(live.preview, media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.get("/jobs/{job_id}/events", summary="Server-Sent Events: progress with previews, then the outcome")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        service.job(job_id)
        return StreamingResponse(
            _events(service, job_id, request), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/capabilities", summary="Models, samplers, limits and defaults")
    def capabilities() -> dict:
        return {
            "models": [
                {"name": e.name, "kind": e.kind, "refiner": e.refiner} for e in service.catalog.entries()
            ],
            "default_model": service.default_model,
            "samplers": [s.name for s in SAMPLERS.values()],
            "schedule_types": [t.label for t in SCHEDULE_TYPES],
            "hires_upscalers": [u.name for u in UPSCALERS],
            "hires_refiner_passes": list(HIRES_REFINER_PASSES),
            "loras": sorted(service.loras.entries()),
            "prompt_syntaxes": list(PROMPT_SYNTAXES),
            "limits": vars(limits),
            "defaults": {
                "steps": JobRequest.model_fields["steps"].default,
                "guidance_scale": JobRequest.model_fields["guidance_scale"].default,
                "strength": DEFAULT_IMG2IMG_STRENGTH,
                "refiner_switch_at": JobRequest.model_fields["refiner_switch_at"].default,
                "hires_refiner_pass": DEFAULT_HIRES_REFINER_PASS,
                "width": None,
                "height": None,
            },
            "preview_every": service.config.preview_every,
            "queue": {"queued": service.store.count("queued"), "running": service.store.count("running")},
        }

    return router


async def _events(service: Service, job_id: str, request: Request):
    """`progress` events (state, step, total, position, and a PNG data URL when there is a new preview) until the job
    ends, then one `done`/`failed`/`cancelled` event with the whole job."""
    last_sent, last_preview, quiet = None, 0, 0.0
    while True:
        if await request.is_disconnected():
            return
        job = service.job(job_id)
        view = service.describe(job)
        if job.state in FINISHED:
            yield _sse(job.state, view)
            return
        live = service.board.get(job_id)
        state = (view["state"], view["step"], view["total"], view["position"])
        preview = None
        if live is not None and live.preview is not None and live.preview_step != last_preview:
            last_preview = live.preview_step
            preview = "data:image/png;base64," + base64.b64encode(live.preview).decode("ascii")
        if state != last_sent or preview is not None:
            last_sent, quiet = state, 0.0
            yield _sse("progress", {"id": job_id, "state": view["state"], "step": view["step"],
                                    "total": view["total"], "position": view["position"], "preview": preview})
        elif quiet >= SSE_KEEPALIVE_SECONDS:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(SSE_POLL_SECONDS)
        quiet += SSE_POLL_SECONDS


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
