"""Concurrent clients each get their own images: 8 threads x 2 jobs, every image equal to the same job run alone
(to 1/255: jobs queued together run as one batch, whose batched matrix products may round a last bit differently);
jobs that wait together run as one batch, and a job cancelled inside a batch ends at once while the others finish."""

from __future__ import annotations

import threading
import time

import numpy as np
from server_helpers import open_png, wait_for_job

from sdxl.metadata import parse_parameters
from sdxl.params import GenerationParams
from sdxl.runner import Runner

PROMPTS = ["a red circle on a blue background", "a large yellow star on a purple background",
           "a green square on a white background", "a small white cross in the top left corner on a black background"]


def test_eight_clients_get_their_own_images(start_server):
    server = start_server()
    results, errors = {}, []

    def client_thread(index: int):
        try:
            with server.client() as client:
                for j in range(2):
                    prompt, seed = PROMPTS[(index + j) % len(PROMPTS)], 100 * index + j
                    created = client.post("/v1/jobs", json={"prompt": prompt, "seed": seed, "steps": 4})
                    job = wait_for_job(client, created.json()["id"])
                    image = open_png(client.get(job["images"][0]["url"]).content)
                    results[(index, j)] = (prompt, seed, image)
        except Exception as err:  # reported below with the thread it came from
            errors.append((index, err))

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == 16
    runner = Runner("cpu")
    for prompt, seed, image in results.values():
        params = parse_parameters(image.info["parameters"])
        assert params["Prompt"] == prompt and params["Seed"] == str(seed)
        (alone,) = runner.run(GenerationParams(prompt=prompt, seed=seed, steps=4, sampler=None, model="demo",
                                               width=None, height=None))
        diff = np.abs(np.asarray(image.convert("RGB")).astype(int) - np.asarray(alone.image).astype(int))
        assert diff.max() <= 1


def _queue_behind_a_long_job(client, bodies):
    """Submit `bodies` while a 150-step job runs, so they wait together; then cancel the long job."""
    long = client.post("/v1/jobs", json={"prompt": PROMPTS[0], "steps": 150, "seed": 0}).json()
    deadline = time.time() + 60
    while client.get(long["url"]).json()["state"] != "running" and time.time() < deadline:
        time.sleep(0.01)
    created = [client.post("/v1/jobs", json=body).json() for body in bodies]
    client.post(f"{long['url']}/cancel")
    return created


def test_jobs_that_wait_together_run_as_one_batch(start_server):
    server = start_server()
    with server.client() as client:
        bodies = [{"prompt": PROMPTS[i % 4], "seed": i, "steps": 4, "guidance_scale": 4.0 + i} for i in range(4)]
        bodies.append({"prompt": PROMPTS[0], "seed": 9, "steps": 5})  # other steps: runs on its own
        created = _queue_behind_a_long_job(client, bodies)
        jobs = [wait_for_job(client, c["id"]) for c in created]
        assert all(j["state"] == "done" for j in jobs)
        assert [j["timings"]["batched_with"] for j in jobs] == [3, 3, 3, 3, 0]
        assert [j["images"][0]["seed"] for j in jobs] == [0, 1, 2, 3, 9]
        assert "CFG scale: 7" in jobs[3]["images"][0]["infotext"]


def test_a_job_cancelled_inside_a_batch_ends_and_the_others_finish(start_server):
    server = start_server()
    with server.client() as client:
        bodies = [{"prompt": PROMPTS[i], "seed": i, "steps": 60} for i in range(3)]
        created = _queue_behind_a_long_job(client, bodies)
        deadline = time.time() + 60
        while client.get(created[1]["url"]).json()["step"] < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert client.post(f"{created[1]['url']}/cancel").json()["state"] == "cancelled"
        jobs = [wait_for_job(client, c["id"]) for c in created]
        assert [j["state"] for j in jobs] == ["done", "cancelled", "done"]
        assert jobs[1]["images"] == [] and jobs[0]["timings"]["batched_with"] == 2


def test_batching_can_be_switched_off(start_server):
    server = start_server(batch_jobs=False)
    with server.client() as client:
        created = _queue_behind_a_long_job(client, [{"prompt": PROMPTS[i], "seed": i, "steps": 3} for i in range(3)])
        assert [wait_for_job(client, c["id"])["timings"]["batched_with"] for c in created] == [0, 0, 0]
