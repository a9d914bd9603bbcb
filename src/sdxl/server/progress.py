"""Live progress of running jobs, shared between the worker thread and the HTTP handlers.

The store has the durable state (queued/running/done, step counts); this keeps what is only worth having while a job
runs: the latest preview image and a version counter per job, which the streaming endpoints watch for changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class LiveProgress:
    """What a running job has reached: steps, the time it started, the latest preview (PNG bytes)."""

    job_id: str
    step: int = 0
    total: int = 0
    started: float = 0.0
    preview: bytes | None = None
    preview_step: int = 0
    version: int = 0

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def eta(self) -> float:
        """Seconds left, extrapolated from the time per step so far (0 before the first step)."""
        if not self.step or not self.total:
            return 0.0
        elapsed = time.time() - self.started
        return elapsed / self.step * (self.total - self.step)


class ProgressBoard:
    """Thread-safe map job id -> LiveProgress, plus a global counter that moves on every change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, LiveProgress] = {}
        self._changed = threading.Condition(self._lock)
        self.version = 0

    def start(self, job_id: str, total: int) -> None:
        with self._lock:
            self._jobs[job_id] = LiveProgress(job_id, total=total, started=time.time())
            self._bump(job_id)

    def step(self, job_id: str, step: int, total: int, preview: bytes | None = None) -> None:
        with self._lock:
            live = self._jobs.get(job_id)
            if live is None:
                return
            live.step, live.total = step, total
            if preview is not None:
                live.preview, live.preview_step = preview, step
            self._bump(job_id)

    def end(self, job_id: str) -> None:
        """The job finished: its live entry goes (the store has the outcome)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self.version += 1
            self._changed.notify_all()

    def get(self, job_id: str) -> LiveProgress | None:
        """A copy of the job's live progress, or None when it is not running."""
        with self._lock:
            live = self._jobs.get(job_id)
            return LiveProgress(**vars(live)) if live is not None else None

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the board's version passes `seen` (or `timeout` seconds); return the current version."""
        with self._lock:
            self._changed.wait_for(lambda: self.version != seen, timeout=timeout)
            return self.version

    def _bump(self, job_id: str) -> None:
        self._jobs[job_id].version += 1
        self.version += 1
        self._changed.notify_all()
