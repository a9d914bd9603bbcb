"""The job store: one SQLite file, the single source of truth for every job's state.

Jobs move queued -> running -> done | failed | cancelled (queued -> cancelled directly). Everything a job needs to run
again is in its row (the request as JSON; input images are files named by the job id), so the queue survives a
restart: `recover()` puts the jobs that were running when the process died back in the queue (or fails them, with
the reason, once they have been started `MAX_ATTEMPTS` times). Each thread gets its own connection; WAL mode lets the
HTTP threads read while the worker writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
MAX_ATTEMPTS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id TEXT NOT NULL UNIQUE,
    api TEXT NOT NULL,                      -- "native" or "a1111"
    state TEXT NOT NULL,
    request TEXT NOT NULL,                  -- JSON
    batch_key TEXT,                         -- jobs with the same key may run as one batch; NULL: alone
    images INTEGER NOT NULL DEFAULT 1,      -- how many images the job makes
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT                             -- JSON: per-image parameters and infotexts
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


@dataclass
class Job:
    """One row of the store."""

    id: str
    seq: int
    api: str
    state: str
    request: dict[str, Any]
    created: float
    batch_key: str | None = None
    images: int = 1
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total: int = 0
    attempts: int = 0
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return len(self.result.get("images", []))


class JobStore:
    """Jobs in the SQLite database at `path` (created with its folder if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # ---- writing -------------------------------------------------------------------------------------------------

    def create(
        self, api: str, request: dict[str, Any], *, job_id: str | None = None, max_queued: int | None = None,
        batch_key: str | None = None, images: int = 1,
    ) -> Job:
        """Queue a new job (with `job_id`, from `new_id()`, when files were stored under it first); QueueFull when
        `max_queued` jobs are already waiting. Queued jobs with the same `batch_key` may be claimed together."""
        db = self._connect()
        job_id = job_id or new_id()
        db.execute("BEGIN IMMEDIATE")
        try:
            if max_queued is not None:
                (waiting,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()
                if waiting >= max_queued:
                    raise QueueFull(f"the queue is full ({waiting} jobs waiting); try again when some have run")
            db.execute(
                "INSERT INTO jobs (id, api, state, request, created, batch_key, images) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, api, QUEUED, json.dumps(request), time.time(), batch_key, images),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.get(job_id)

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        jobs = self.claim_batch(max_images=1)
        return jobs[0] if jobs else None

    def claim_batch(self, max_images: int) -> list[Job]:
        """Mark the oldest queued job running, with the next queued jobs of its batch key while their images fit in
        `max_images` (in queue order); return them ([] when the queue is empty)."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            first = db.execute(
                "SELECT id, seq, batch_key, images FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (QUEUED,)
            ).fetchone()
            ids = [first["id"]] if first is not None else []
            if first is not None and first["batch_key"] is not None:
                total = first["images"]
                rows = db.execute(
                    "SELECT id, images FROM jobs WHERE state = ? AND batch_key = ? AND seq > ? ORDER BY seq",
                    (QUEUED, first["batch_key"], first["seq"]),
                )
                for row in rows.fetchall():
                    if total + row["images"] > max_images:
                        break
                    ids.append(row["id"])
                    total += row["images"]
            db.executemany(
                "UPDATE jobs SET state = ?, started = ?, step = 0, attempts = attempts + 1 WHERE id = ?",
                [(RUNNING, time.time(), i) for i in ids],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [self.get(i) for i in ids]

    def set_progress(self, job_ids: list[str], step: int, total: int) -> None:
        """Record how far running jobs are (one transaction for a batch)."""
        self._connect().executemany(
            "UPDATE jobs SET step = ?, total = ? WHERE id = ? AND state = ?",
            [(step, total, job_id, RUNNING) for job_id in job_ids],
        )

    def finish(self, job_id: str, state: str, *, error: str | None = None, result: dict | None = None) -> None:
        """End a job as done, failed or cancelled."""
        if state not in FINISHED:
            raise ValueError(f"a job finishes as one of {FINISHED}, not {state!r}")
        self._connect().execute(
            "UPDATE jobs SET state = ?, finished = ?, error = ?, result = ? WHERE id = ?",
            (state, time.time(), error, json.dumps(result or {}), job_id),
        )

    def requeue(self, job_ids: list[str], *, note: str) -> None:
        """Put running jobs back in the queue, in their old place, with `note` saying why (a shutdown)."""
        self._connect().executemany(
            # an orderly stop is not a crash: the start does not count towards MAX_ATTEMPTS
            "UPDATE jobs SET state = ?, step = 0, error = ?, attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = ?",
            [(QUEUED, note, job_id, RUNNING) for job_id in job_ids],
        )

    def cancel_if_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started yet; False when it is not queued (running or finished)."""
        cursor = self._connect().execute(
            "UPDATE jobs SET state = ?, finished = ?, error = ? WHERE id = ? AND state = ?",
            (CANCELLED, time.time(), "cancelled before it started", job_id, QUEUED),
        )
        return cursor.rowcount == 1

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: jobs left running go back to the queue (ahead of newer ones, in their old order), or
        fail with the reason once they have been started MAX_ATTEMPTS times. Returns (requeued ids, failed ids)."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state = ?", (RUNNING,)).fetchall()
            requeued = [r["id"] for r in rows if r["attempts"] < MAX_ATTEMPTS]
            failed = [r["id"] for r in rows if r["attempts"] >= MAX_ATTEMPTS]
            db.executemany(
                "UPDATE jobs SET state = ?, step = 0, error = ? WHERE id = ?",
                [(QUEUED, "queued again: the server process ended while this job ran (a crash or a kill)", i) for i in requeued],
            )
            db.executemany(
                "UPDATE jobs SET state = ?, finished = ?, error = ? WHERE id = ?",
                [
                    (FAILED, time.time(), (f"the server process ended while this job ran, {MAX_ATTEMPTS} times; "
                                            "not retried again (it may be what stops the server: check its size "
                                            "and the server log)"), i)
                    for i in failed
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return requeued, failed

    # ---- reading -------------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        row = self._connect().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def list(self, *, offset: int = 0, limit: int = 20, state: str | None = None) -> tuple[list[Job], int]:
        """Jobs newest first, paged; and how many there are in all (of `state`, when given)."""
        db = self._connect()
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        (total,) = db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()
        rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*args, limit, offset))
        return [_job(r) for r in rows.fetchall()], total

    def position(self, job: Job) -> int:
        """1 for the next job to run, 2 for the one after, ...; 0 when the job is not waiting."""
        if job.state != QUEUED:
            return 0
        (ahead,) = self._connect().execute(
            "SELECT COUNT(*) FROM jobs WHERE state = ? AND seq < ?", (QUEUED, job.seq)
        ).fetchone()
        return ahead + 1

    def count(self, state: str) -> int:
        """How many jobs are in `state`."""
        (n,) = self._connect().execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()
        return n


def new_id() -> str:
    """A fresh, unguessable job id."""
    return uuid.uuid4().hex


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["request"] = json.loads(data["request"])
    data["result"] = json.loads(data["result"]) if data["result"] else {}
    return Job(**data)
