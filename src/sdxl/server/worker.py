"""The one worker thread that owns the device: it takes queued jobs from the store and runs them through the runner.

Cancelling a running job sets a flag the step callback checks, so the job stops within one denoising step; A1111's
interrupt and skip ask the runner to stop denoising and decode what there is. A job that fails (bad input found
late, out of memory, a NaN decode, a bug) is marked failed with the reason, and the worker goes on to the next one.
Text-to-image jobs that are queued together and share a batch key (`sdxl.batching`) run as one batch of up to
`max_batch` images, each with its own prompt, seed and CFG scale.
"""

from __future__ import annotations

import gc
import io
import logging
import shutil
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdxl.batching import run_batch
from sdxl.generation import Cancelled, GenerationFailed, Step
from sdxl.metadata import format_parameters, save_png
from sdxl.params import GenerationParams
from sdxl.runner import Runner
from sdxl.server.catalog import ModelNotFound
from sdxl.server.progress import ProgressBoard
from sdxl.server.store import CANCELLED, DONE, FAILED, Job, JobStore

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "mask")

# why a job failed: decides the HTTP status the synchronous A1111 endpoints answer with
INPUT_ERROR, OUT_OF_MEMORY, BAD_OUTPUT, INTERNAL_ERROR = "input", "out_of_memory", "bad_output", "internal"


class ShuttingDown(Exception):
    """Raised by the step callback when the server stops: the running jobs go back to the queue."""


class DataFolder:
    """Where a server keeps its files: the database, input images of waiting jobs, and generated images."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"

    def inputs(self, job_id: str) -> Path:
        return self.root / "inputs" / job_id

    def images(self, job_id: str) -> Path:
        return self.root / "images" / job_id

    def image(self, job_id: str, index: int) -> Path:
        return self.images(job_id) / f"{index}.png"

    def save_inputs(self, job_id: str, images: dict[str, Any]) -> None:
        """Store a job's input images (PIL) as PNG before it is queued, so it can run after a restart."""
        folder = self.inputs(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            image.save(folder / f"{name}.png", format="PNG")

    def remove_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.inputs(job_id), ignore_errors=True)

    def load_inputs(self, job_id: str) -> dict[str, Any]:
        from PIL import Image

        out = {}
        for name in INPUT_NAMES:
            path = self.inputs(job_id) / f"{name}.png"
            if path.is_file():
                with Image.open(path) as image:
                    out[name] = image.convert("RGB")
        return out


class Worker:
    """Runs jobs from `store` one at a time on a background thread."""

    def __init__(self, store: JobStore, runner: Runner, data: DataFolder, board: ProgressBoard, *,
                 preview_every: int = 2, preload: str | None = None, max_batch: int = 1):
        self.store = store
        self.runner = runner
        self.data = data
        self.board = board
        self.preview_every = preview_every
        self.preload = preload  # a model to load before the first job (so that job does not wait for it)
        self.max_batch = max_batch  # images that queued text-to-image jobs may share one call with (1: no batching)
        self.current: str | None = None  # id of the running job (the first of a batch)
        self.running: list[str] = []  # every job of the running batch
        self._cancel: set[str] = set()
        self._stop_current: str | None = None  # A1111 interrupt/skip: end denoising early, keep the images
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._previewer: tuple[Any, Any] | None = None  # (vae, LatentPreviewer)

    # ---- control ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sdxl-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the running ones stop at their next step and go back to the queue (they run again,
        from the start, when the server is started again)."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        """A job was queued: look at the queue now."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next step (no images); it is marked cancelled. In a batch the others run on,
        and the cancelled job's images are dropped at the end."""
        self._cancel.add(job_id)

    def stop_early(self) -> str | None:
        """A1111's interrupt/skip: the running job stops denoising and returns what it has. Its id, or None."""
        job_id = self.current
        if job_id is not None:
            self._stop_current = job_id
        return job_id

    def stopping_early(self, job_id: str | None) -> bool:
        """Whether `job_id` is running and was asked to stop early."""
        return job_id is not None and self._stop_current == job_id

    # ---- the loop --------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        if self.preload:
            try:
                self.runner.load(self.preload)
            except Exception as err:  # noqa: BLE001  the jobs that need it will fail with the reason; keep serving
                logger.error("could not load %s at start: %s", self.preload, err)
        while not self._halt.is_set():
            jobs = self.store.claim_batch(self.max_batch)
            if not jobs:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        """Run one job, or several text-to-image jobs as one batch; record each one's outcome."""
        ids = [job.id for job in jobs]
        self.current, self.running = ids[0], ids
        params = [GenerationParams(**job.request["params"]) for job in jobs]
        started = time.time()
        for job, p in zip(jobs, params):
            self.board.start(job.id, total=p.steps)
        on_step = self._step_callback(jobs)
        try:
            if len(jobs) == 1:
                inputs = self.data.load_inputs(ids[0])
                results = [self.runner.run(params[0], image=inputs.get("image"), mask=inputs.get("mask"),
                                           on_step=on_step)]
            else:
                results = run_batch(self.runner, params, on_step=on_step)
            for job, images in zip(jobs, results):
                timings = {"queued_s": round(started - job.created, 3), "run_s": round(time.time() - started, 3),
                           "batched_with": len(jobs) - 1}
                if job.id in self._cancel:  # cancelled while its batch ran on: the others keep their images
                    self.store.finish(job.id, CANCELLED, error="cancelled while running", result={"timings": timings})
                    continue
                result = self._save(job.id, images)
                result["timings"] = timings
                result["interrupted"] = self._stop_current == ids[0]
                self.store.finish(job.id, DONE, result=result)
        except ShuttingDown:
            self.store.requeue(ids, note="queued again: the server was shut down while this job ran")
        except Cancelled:
            for job_id in ids:
                self.store.finish(job_id, CANCELLED, error="cancelled while running",
                                  result={"timings": {"run_s": round(time.time() - started, 3)}})
        except Exception as err:  # noqa: BLE001  every failure ends these jobs only; the worker serves the next ones
            kind, message = describe_failure(err)
            if kind == INTERNAL_ERROR:
                logger.error("job(s) %s failed:\n%s", ", ".join(ids), traceback.format_exc())
            if kind == OUT_OF_MEMORY:
                self.runner.drop_captures()
                free_memory()
            for job_id in ids:
                self.store.finish(job_id, FAILED, error=message, result={"error_kind": kind})
        finally:
            for job_id in ids:
                self.board.end(job_id)
                self._cancel.discard(job_id)
                if not self._halt.is_set():  # a job queued again at shutdown still needs its input images
                    self.data.remove_inputs(job_id)
            if self._stop_current in ids:
                self._stop_current = None
            self.current, self.running = None, []

    def _step_callback(self, jobs: list[Job]):
        ids = [job.id for job in jobs]
        # each job's first row in the batch, for its preview
        rows = [sum(job.images for job in jobs[:k]) for k in range(len(jobs))]

        def on_step(step: Step) -> str | None:
            if self._halt.is_set():
                raise ShuttingDown()
            if all(job_id in self._cancel for job_id in ids):
                raise Cancelled()
            previews: list[bytes | None] = [None] * len(ids)
            if self.preview_every and (step.step % self.preview_every == 0 or step.step == 1):
                previews = self._preview_pngs(step, rows)
            for job_id, preview in zip(ids, previews):
                self.board.step(job_id, step.step, step.total, preview)
            self.store.set_progress(ids, step.step, step.total)
            return "stop" if self._stop_current in ids else None

        return on_step

    def _preview_pngs(self, step: Step, rows: list[int]) -> list[bytes | None]:
        """PNG previews of the given batch rows (None each when the preview fails: never fail a job for one)."""
        from sdxl.preview import LatentPreviewer

        vae = step.pipe.vae
        if self._previewer is None or self._previewer[0] is not vae:
            self._previewer = (vae, LatentPreviewer.for_pipeline(step.pipe))  # a tiny VAE when there is one
        shown = step.denoised if step.denoised is not None else step.latents
        try:
            images = self._previewer[1](shown[rows])
        except (ValueError, RuntimeError) as err:
            logger.warning("no preview: %s", err)
            return [None] * len(rows)
        out = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out

    def _save(self, job_id: str, results: list) -> dict:
        folder = self.data.images(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i, result in enumerate(results):
            save_png(result.image, self.data.image(job_id, i), result.params)
            # the image's own size: with the hires fix the parameters keep the first pass's, as A1111 records them
            images.append({**asdict(result.params), "infotext": format_parameters(result.params),
                           "image_size": list(result.image.size)})
        return {"images": images}


def describe_failure(err: BaseException) -> tuple[str, str]:
    """(kind, message) for a job that raised `err`."""
    import torch

    text = str(err)
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text.lower() or (
        "can't allocate memory" in text
    ):
        return OUT_OF_MEMORY, (
            "out of memory while running this job; the server freed what it could and goes on. Try a smaller size "
            f"or batch, or fewer jobs at once. ({text.splitlines()[0] if text else type(err).__name__})"
        )
    if isinstance(err, GenerationFailed):
        return BAD_OUTPUT, text
    if isinstance(err, (ValueError, TypeError, FileNotFoundError, ModelNotFound)):
        return INPUT_ERROR, text or type(err).__name__
    return INTERNAL_ERROR, f"internal error ({type(err).__name__}: {text}); see the server log"


def free_memory() -> None:
    """Release what the failed job held: Python garbage and the CUDA allocator's cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
