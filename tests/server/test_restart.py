"""The queue survives a hard kill: queued jobs (inputs included) run after a restart, the job that was running is
queued again, finished jobs keep their images."""

from __future__ import annotations

import signal
import time

from server_helpers import png_b64, square_scene, wait_for_job

PROMPT = "a red circle on a blue background"


def test_kill_and_restart_loses_no_job(spawn_server, tmp_path):
    data = tmp_path / "data"
    first = spawn_server(data)
    with first.client() as client:
        finished = wait_for_job(client, client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 2, "seed": 1})
                                .json()["id"])
        assert finished["state"] == "done"
        long = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 150, "seed": 2}).json()
        image, mask = square_scene()
        queued = [
            client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 3, "seed": 3}).json(),
            client.post("/v1/jobs", json={"prompt": "a green square", "steps": 3, "seed": 4,
                                          "image": png_b64(image), "strength": 0.5}).json(),
            client.post("/v1/jobs", json={"prompt": "a yellow square", "steps": 3, "seed": 5,
                                          "image": png_b64(image), "mask": png_b64(mask)}).json(),
        ]
        deadline = time.time() + 60
        while client.get(long["url"]).json()["step"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        assert client.get(long["url"]).json()["state"] == "running"
    first.process.send_signal(signal.SIGKILL)  # no shutdown handlers run
    first.process.wait(30)

    second = spawn_server(data)
    with second.client() as client:
        history = client.get("/v1/jobs", params={"limit": 50}).json()
        assert {j["id"] for j in history["jobs"]} == {finished["id"], long["id"], *(q["id"] for q in queued)}
        again = client.get(long["url"]).json()
        assert again["state"] in ("queued", "running") and "queued again" in (again["note"] or again["error"] or "")
        assert client.get(finished["images"][0]["url"]).status_code == 200  # old images stay retrievable
        client.post(f"{long['url']}/cancel")  # no need to wait for 150 steps
        for job in queued:
            done = wait_for_job(client, job["id"])
            assert done["state"] == "done", done["error"]
            assert client.get(done["images"][0]["url"]).status_code == 200
        assert wait_for_job(client, long["id"])["state"] == "cancelled"


def test_an_orderly_stop_puts_the_running_job_back_in_the_queue(spawn_server, tmp_path):
    data = tmp_path / "data"
    first = spawn_server(data)
    with first.client() as client:
        image, _ = square_scene()
        running = client.post("/v1/jobs", json={"prompt": "a green square", "steps": 150, "seed": 6,
                                                "image": png_b64(image), "strength": 1.0}).json()
        deadline = time.time() + 60
        while client.get(running["url"]).json()["step"] < 1 and time.time() < deadline:
            time.sleep(0.02)
    first.process.send_signal(signal.SIGTERM)  # uvicorn shuts down: the worker stops at the next step
    first.process.wait(60)  # (uvicorn re-raises the signal once it has shut down: the exit code is -15)

    second = spawn_server(data)
    with second.client() as client:
        again = client.get(running["url"]).json()
        assert again["state"] in ("queued", "running") and "the server was shut down" in again["note"]
        assert again["step"] < 150
        client.post(f"{running['url']}/cancel")
        assert wait_for_job(client, running["id"])["state"] == "cancelled"
