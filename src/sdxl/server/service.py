"""What both HTTP APIs do with jobs: validate a request against the limits, queue it, cancel it, describe it.

`Service` bundles the parts a running server has (settings, data folder, job store, model catalog, progress board,
worker); the routes of the native API and of the A1111 API are thin over it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sdxl.batching import batch_key
from sdxl.devices import pick_device, pick_dtype
from sdxl.generation import check_params, mode_of
from sdxl.params import DEFAULT_HIRES_REFINER_PASS, SAMPLERS, GenerationParams, find_sampler, find_schedule
from sdxl.runner import Runner
from sdxl.server.catalog import LoraCatalog, ModelCatalog, ModelNotFound, UnsafeModelName
from sdxl.server.config import ServerConfig
from sdxl.server.errors import BadRequest, Conflict, Invalid, NotFound, TooMany
from sdxl.server.progress import ProgressBoard
from sdxl.server.store import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, Job, JobStore, QueueFull, new_id
from sdxl.server.worker import DataFolder, Worker

PROMPT_SYNTAXES = ("none", "a1111", "compel")


class Service:
    """A server's state and the job operations the routes call."""

    def __init__(self, config: ServerConfig, runner: Runner | None = None):
        config.check()
        self.config = config
        self.limits = config.limits
        self.data = DataFolder(config.data_dir)
        self.store = JobStore(self.data.database)
        self.catalog = ModelCatalog(config.model, config.models_dir)
        self.loras = LoraCatalog(config.lora_dir)
        self.board = ProgressBoard()
        self.default_model = self.catalog.entries()[0].name
        # A1111's option `hires_fix_refiner_pass` (/sdapi/v1/options): the A1111 API's hires fix + refiner passes
        self.hires_refiner_pass = DEFAULT_HIRES_REFINER_PASS
        device = pick_device(config.device)
        self.runner = runner or Runner(device, pick_dtype(config.dtype, device), resolve=self._source,
                                       resolve_lora=self.loras.resolve, fast=config.fast)
        self.worker = Worker(self.store, self.runner, self.data, self.board, preview_every=config.preview_every,
                             preload=self.default_model if config.preload else None,
                             max_batch=self.limits.max_batch if config.batch_jobs else 1)
        self.requeued, self.failed_on_start = self.store.recover()

    def _source(self, name: str) -> str:
        return self.catalog.resolve(name).source

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    # ---- submitting ------------------------------------------------------------------------------------------------

    def submit(self, api: str, params: GenerationParams, inputs: dict[str, Any], extra: dict | None = None) -> Job:
        """Validate `params` (and the input images, PIL) and queue the job; the error says what is wrong."""
        self.validate(params, inputs)
        job_id = new_id()
        if inputs:
            self.data.save_inputs(job_id, inputs)
        request = {"params": asdict(params), "inputs": sorted(inputs), **(extra or {})}
        key = batch_key(params) if not inputs else None  # image inputs: never batched
        try:
            job = self.store.create(api, request, job_id=job_id, max_queued=self.limits.max_queue, batch_key=key,
                                    images=params.batch_size)
        except QueueFull as err:
            self.data.remove_inputs(job_id)
            raise TooMany(str(err), headers={"Retry-After": "5"}) from None
        self.worker.notify()
        return job

    def validate(self, params: GenerationParams, inputs: dict[str, Any]) -> None:
        """Every check a request can fail before it is queued (Invalid/BadRequest/NotFound)."""
        limits = self.limits
        try:
            mode = mode_of(inputs.get("image"), inputs.get("mask"))
            check_params(params, mode)
        except ValueError as err:
            raise Invalid(str(err)) from None
        scale = params.hires_scale or 1.0
        for name, bound in (("width", limits.max_width), ("height", limits.max_height)):
            value = getattr(params, name)
            if value is not None and value > bound:
                raise Invalid(f"{name} {value} is over this server's limit of {bound} pixels")
            if value is not None and int(value * scale) > bound:
                raise Invalid(f"the hires fix makes the {name} {int(value * scale)} pixels, over this server's limit "
                              f"of {bound}; lower hires_scale or the size")
        if params.steps > limits.max_steps:
            raise Invalid(f"steps {params.steps} is over this server's limit of {limits.max_steps}")
        if params.batch_size > limits.max_batch:
            raise Invalid(f"batch size {params.batch_size} is over this server's limit of {limits.max_batch}")
        for name in ("prompt", "negative_prompt", "prompt_2"):
            text = getattr(params, name) or ""
            if len(text) > limits.max_prompt_chars:
                raise Invalid(f"{name} has {len(text)} characters; the limit is {limits.max_prompt_chars}")
        if params.prompt_syntax not in (None, "a1111", "compel"):
            raise Invalid(f"prompt_syntax must be one of {list(PROMPT_SYNTAXES)}, not {params.prompt_syntax!r}")
        if params.sampler:
            try:
                sampler = find_sampler(params.sampler)
            except ValueError as err:
                raise Invalid(str(err)) from None
            if find_schedule(params.schedule).name != "automatic" and not sampler_takes_schedules(sampler):
                raise no_schedule_for(sampler)
        self.check_model(params.model)
        if params.refiner:
            self.check_model(params.refiner, what="refiner")
        self.check_loras(params)
        image, mask = inputs.get("image"), inputs.get("mask")
        if image is not None and mask is not None and image.size != mask.size:
            raise Invalid(
                f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; send a mask "
                "of the image's size"
            )

    def check_loras(self, params: GenerationParams) -> None:
        """Every LoRA a request names (its `loras` and, with the a1111 syntax, its `<lora:NAME:W>` tags) is in the
        server's LoRA folder (unsafe names -> 400, unknown or malformed -> 422)."""
        from sdxl.prompts.lora_tags import extract_lora_tags

        names = [name for name, _ in params.loras]
        if params.prompt_syntax == "a1111":
            try:
                names += [name for name, _ in extract_lora_tags(params.prompt)[1]]
            except ValueError as err:
                raise Invalid(str(err)) from None
        for name in names:
            try:
                self.loras.resolve(name)
            except UnsafeModelName as err:
                raise BadRequest(f"LoRA: {err}") from None
            except ModelNotFound as err:
                raise Invalid(str(err)) from None

    def check_model(self, name: str, *, what: str = "model") -> None:
        """A name the catalog lists (UnsafeModelName -> 400, unknown -> 422)."""
        try:
            self.catalog.resolve(name)
        except UnsafeModelName as err:
            raise BadRequest(f"{what}: {err}") from None
        except ModelNotFound as err:
            raise Invalid(f"{what}: {err}") from None

    # ---- reading and cancelling ------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id) if isinstance(job_id, str) and len(job_id) <= 64 else None
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (it never starts) or a running one (it stops at its next step)."""
        job = self.job(job_id)
        if job.state in FINISHED:
            raise Conflict(f"job {job_id} has already ended ({job.state}); there is nothing to cancel")
        if not self.store.cancel_if_queued(job_id):
            self.worker.cancel(job_id)  # running: it stops at its next step
            if len(self.worker.running) > 1 and job_id in self.worker.running:
                # part of a batch that runs on for the others: it is cancelled now, its images are dropped
                self.store.finish(job_id, CANCELLED, error="cancelled while running")
        return self.job(job_id)

    def image_path(self, job_id: str, index: int):
        job = self.job(job_id)
        if not 0 <= index < job.image_count:
            raise NotFound(f"job {job_id} has {job.image_count} image(s); there is no image {index}")
        path = self.data.image(job_id, index)
        if not path.is_file():
            raise NotFound(f"the file of image {index} of job {job_id} is gone from the data folder")
        return path

    def describe(self, job: Job) -> dict[str, Any]:
        """A job as the native API shows it."""
        live = self.board.get(job.id) if job.state == RUNNING else None
        step, total = (live.step, live.total) if live is not None else (job.step, job.total)
        images = [
            {"index": i, "url": f"/v1/jobs/{job.id}/images/{i}", "seed": info.get("seed"),
             "width": info["image_size"][0], "height": info["image_size"][1], "infotext": info.get("infotext")}
            for i, info in enumerate(job.result.get("images", []))
        ]
        return {
            "id": job.id,
            "api": job.api,
            "state": job.state,
            "position": self.store.position(job) if job.state == QUEUED else 0,
            "step": step,
            "total": total or job.request["params"].get("steps", 0),
            "progress": 1.0 if job.state == "done" else (step / total if total else 0.0),
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "timings": job.result.get("timings", {}),
            "error": job.error if job.state in (FAILED, CANCELLED) else None,
            "note": job.error if job.state in (QUEUED, RUNNING) else None,  # e.g. queued again after a restart
            "interrupted": job.result.get("interrupted", False),
            "params": job.request["params"],
            "images": images,
            "preview_url": f"/v1/jobs/{job.id}/preview" if live is not None and live.preview else None,
        }


def sampler_takes_schedules(sampler) -> bool:
    """Whether a sampler's scheduler class takes A1111's schedule types (the k-diffusion samplers)."""
    import sdxl

    return getattr(sdxl, sampler.scheduler).supports_schedule_types


def no_schedule_for(sampler) -> Invalid:
    """The error for a schedule type on a sampler that takes none, naming those that do."""
    able = ", ".join(s.name for s in SAMPLERS.values() if sampler_takes_schedules(s))
    return Invalid(f"the sampler {sampler.name!r} takes no schedule type (only Automatic); these do: {able}")
