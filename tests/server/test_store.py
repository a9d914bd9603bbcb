"""The SQLite job store: queue order, claiming, cancelling, limits and recovery after a crash."""

from __future__ import annotations

import threading

import pytest

from sdxl.server.store import CANCELLED, DONE, FAILED, MAX_ATTEMPTS, QUEUED, RUNNING, JobStore, QueueFull


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite3")


def test_jobs_run_in_order_and_report_positions(store):
    a, b, c = (store.create("native", {"n": i}) for i in range(3))
    assert [store.position(j) for j in (a, b, c)] == [1, 2, 3]
    claimed = store.claim_next()
    assert claimed.id == a.id and claimed.state == RUNNING and claimed.attempts == 1
    assert store.position(store.get(b.id)) == 1 and store.position(claimed) == 0
    store.finish(a.id, DONE, result={"images": [{"seed": 1}]})
    assert store.get(a.id).image_count == 1 and store.get(a.id).finished is not None


def test_cancel_only_takes_queued_jobs(store):
    a, b = store.create("native", {}), store.create("native", {})
    store.claim_next()
    assert not store.cancel_if_queued(a.id)  # running: the worker has to stop it
    assert store.cancel_if_queued(b.id) and store.get(b.id).state == CANCELLED
    assert store.claim_next() is None  # a cancelled job never starts


def test_the_queue_limit(store):
    store.create("native", {}, max_queued=2)
    store.create("native", {}, max_queued=2)
    with pytest.raises(QueueFull, match="queue is full"):
        store.create("native", {}, max_queued=2)
    store.claim_next()
    store.create("native", {}, max_queued=2)


def test_recovery_requeues_running_jobs_then_gives_up(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = store.create("native", {"prompt": "x"})
    later = store.create("native", {"prompt": "y"})
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = JobStore(path).claim_next()  # a fresh process each time
        assert claimed.id == job.id and claimed.attempts == attempt  # re-queued ahead of the later job
        requeued, failed = JobStore(path).recover()
        if attempt < MAX_ATTEMPTS:
            assert requeued == [job.id] and store.get(job.id).state == QUEUED
            assert "queued again" in store.get(job.id).error
    assert failed == [job.id] and store.get(job.id).state == FAILED
    assert "not retried again" in store.get(job.id).error
    assert store.get(later.id).state == QUEUED


def test_paging_and_counts(store):
    ids = [store.create("native", {"i": i}).id for i in range(5)]
    page, total = store.list(offset=1, limit=2)
    assert total == 5 and [j.id for j in page] == ids[::-1][1:3]
    assert store.count(QUEUED) == 5 and store.list(state=DONE) == ([], 0)


def test_only_one_worker_claims_each_job(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for i in range(40):
        store.create("native", {"i": i})
    claimed, lock = [], threading.Lock()

    def worker():
        own = JobStore(path)
        while (job := own.claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 40 == len(set(claimed))


def test_finish_refuses_a_non_final_state(store):
    job = store.create("native", {})
    with pytest.raises(ValueError, match="finishes as one of"):
        store.finish(job.id, RUNNING)
