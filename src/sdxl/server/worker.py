"""The one worker thread that owns the device: it takes queued jobs from the store and runs them through the runner.

Cancelling a running job sets a flag the step callback checks, so the job stops within one denoising step; A1111's
interrupt and skip ask the runner to stop denoising and decode what there is. A job that fails (bad input found
late, out of memory, a NaN decode, a bug) is marked failed with the reason, and the worker goes on to the next one.
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

from sdxl.metadata import format_parameters, save_png
from sdxl.params import GenerationParams
from sdxl.runner import Cancelled, GenerationFailed, Runner, Step
from sdxl.server.catalog import ModelNotFound
from sdxl.server.progress import ProgressBoard
from sdxl.server.store import CANCELLED, DONE, FAILED, Job, JobStore

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "mask")

# why a job failed: decides the HTTP status the synchronous A1111 endpoints answer with
INPUT_ERROR, OUT_OF_MEMORY, BAD_OUTPUT, INTERNAL_ERROR = "input", "out_of_memory", "bad_output", "internal"


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
                 preview_every: int = 2):
        self.store = store
        self.runner = runner
        self.data = data
        self.board = board
        self.preview_every = preview_every
        self.current: str | None = None  # id of the running job
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
        """Finish the running job's current step and stop taking jobs."""
        self._halt.set()
        if self.current is not None:
            self._cancel.add(self.current)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        """A job was queued: look at the queue now."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next step (no images); it is marked cancelled."""
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
        while not self._halt.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        self.current = job.id
        params = GenerationParams(**job.request["params"])
        started = time.time()
        self.board.start(job.id, total=params.steps)
        try:
            inputs = self.data.load_inputs(job.id)
            results = self.runner.run(
                params, image=inputs.get("image"), mask=inputs.get("mask"), on_step=self._step_callback(job.id)
            )
            result = self._save(job.id, results)
            result["timings"] = {"queued_s": round(started - job.created, 3), "run_s": round(time.time() - started, 3)}
            result["interrupted"] = self._stop_current == job.id
            self.store.finish(job.id, DONE, result=result)
        except Cancelled:
            self.store.finish(job.id, CANCELLED, error="cancelled while running",
                              result={"timings": {"run_s": round(time.time() - started, 3)}})
        except Exception as err:  # every failure ends this job only; the worker serves the next one
            kind, message = describe_failure(err)
            if kind == INTERNAL_ERROR:
                logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            if kind == OUT_OF_MEMORY:
                free_memory()
            self.store.finish(job.id, FAILED, error=message, result={"error_kind": kind})
        finally:
            self.board.end(job.id)
            self._cancel.discard(job.id)
            if self._stop_current == job.id:
                self._stop_current = None
            self.current = None
            self.data.remove_inputs(job.id)

    def _step_callback(self, job_id: str):
        def on_step(step: Step) -> str | None:
            if job_id in self._cancel:
                raise Cancelled()
            preview = None
            if self.preview_every and (step.step % self.preview_every == 0 or step.step == 1):
                preview = self._preview_png(step)
            self.board.step(job_id, step.step, step.total, preview)
            self.store.set_progress(job_id, step.step, step.total)
            return "stop" if self._stop_current == job_id else None

        return on_step

    def _preview_png(self, step: Step) -> bytes | None:
        from sdxl.preview import LatentPreviewer

        vae = step.pipe.vae
        if self._previewer is None or self._previewer[0] is not vae:
            self._previewer = (vae, LatentPreviewer.for_pipeline(step.pipe))  # a tiny VAE when there is one
        try:
            image = self._previewer[1](step.latents[:1])[0]
        except (ValueError, RuntimeError) as err:  # a preview is a nicety: never fail the job for one
            logger.warning("no preview: %s", err)
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def _save(self, job_id: str, results: list) -> dict:
        folder = self.data.images(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i, result in enumerate(results):
            save_png(result.image, self.data.image(job_id, i), result.params)
            images.append({**asdict(result.params), "infotext": format_parameters(result.params)})
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
