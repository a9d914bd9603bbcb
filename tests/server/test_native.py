"""The native job API on the demo model, end to end over loopback HTTP."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from server_helpers import open_png, png_b64, square_scene, wait_for_job

from sdxl.metadata import parse_parameters
from sdxl.params import GenerationParams
from sdxl.runner import Runner

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def client(demo_server):
    with demo_server.client() as c:
        yield c


def submit(client, **body) -> dict:
    response = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 6, **body})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_job_returns_at_once_and_its_image_equals_the_runners(client):
    created = submit(client, seed=5, sampler="Euler a")
    assert set(created) == {"id", "state", "position", "url", "events_url"}
    assert created["state"] == "queued" and created["position"] >= 1
    job = wait_for_job(client, created["id"])
    assert job["state"] == "done", job["error"]
    assert job["step"] == job["total"] == 6 and job["progress"] == 1.0
    assert job["timings"]["run_s"] > 0 and job["error"] is None
    (info,) = job["images"]
    response = client.get(info["url"])
    assert response.headers["content-type"] == "image/png"
    image = open_png(response.content)
    params = parse_parameters(image.info["parameters"])
    assert (params["Seed"], params["Steps"], params["Sampler"], params["Model"]) == ("5", "6", "Euler a", "demo")
    assert params["Size"] == "128x128" == f"{info['width']}x{info['height']}"
    # the same parameters through the runner directly (what `sdxl generate` does) give the same pixels
    (direct,) = Runner("cpu").run(GenerationParams(prompt=PROMPT, steps=6, seed=5, sampler="Euler a", model="demo",
                                                   width=None, height=None))
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(direct.image))


def test_a_batch_gets_consecutive_seeds_and_a_random_seed_is_reported(client):
    job = wait_for_job(client, submit(client, seed=7, batch_size=2)["id"])
    assert [i["seed"] for i in job["images"]] == [7, 8]
    job = wait_for_job(client, submit(client, seed=-1)["id"])
    seed = job["images"][0]["seed"]
    assert 0 <= seed < 2**32
    png = open_png(client.get(job["images"][0]["url"]).content)
    assert parse_parameters(png.info["parameters"])["Seed"] == str(seed)


def test_img2img_inpaint_and_refiner_jobs(client):
    image, mask = square_scene()
    img2img = submit(client, image=png_b64(image, data_url=True), strength=0.6, seed=1)
    inpaint = submit(client, prompt="a yellow square on a blue background", image=png_b64(image), mask=png_b64(mask),
                     strength=0.9, mask_blur=2, seed=1)
    refined = submit(client, refiner="demo-refiner", refiner_switch_at=0.7, seed=1, steps=10)
    for created, key in ((img2img, "Denoising strength: 0.6"), (inpaint, "Mask blur: 2"), (refined, "Refiner: demo")):
        job = wait_for_job(client, created["id"])
        assert job["state"] == "done", job["error"]
        assert key in job["images"][0]["infotext"]


def test_history_is_paged_newest_first(client):
    ids = [submit(client, steps=1, seed=i)["id"] for i in range(3)]
    for job_id in ids:
        wait_for_job(client, job_id)
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["total"] >= 3 and page["limit"] == 2
    second = client.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert second["jobs"][0]["id"] == ids[1]
    done = client.get("/v1/jobs", params={"state": "done", "limit": 200}).json()
    assert all(j["state"] == "done" for j in done["jobs"])


def test_server_sent_events_bring_progress_previews_and_the_outcome(client):
    created = submit(client, steps=60, seed=3)  # long enough for several 0.1 s polls of the stream
    events = []
    with client.stream("GET", created["events_url"]) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
                if event in ("done", "failed", "cancelled"):
                    break
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and events[-1][1]["images"]
    steps = [d["step"] for e, d in events if e == "progress" and d["state"] == "running"]
    assert steps and steps == sorted(steps) and steps[-1] <= 60
    previews = [d["preview"] for e, d in events if e == "progress" and d["preview"]]
    assert previews and previews[0].startswith("data:image/png;base64,")


def test_capabilities_list_models_samplers_limits(client):
    caps = client.get("/v1/capabilities").json()
    names = [m["name"] for m in caps["models"]]
    assert names[:2] == ["demo", "demo-refiner"] and caps["default_model"] == "demo"
    assert "DPM++ 2M Karras" in caps["samplers"]
    assert caps["limits"]["max_steps"] == 150 and caps["defaults"]["steps"] == 30


def test_cancel_a_queued_job_and_a_running_one(start_server):
    server = start_server()
    with server.client() as client:
        running = submit(client, steps=150, seed=1)
        queued = submit(client, steps=2, seed=2)
        deadline = time.time() + 60
        while client.get(running["url"]).json()["step"] < 2 and time.time() < deadline:
            time.sleep(0.02)
        cancelled = client.post(f"{queued['url']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        asked = time.time()
        assert client.post(f"{running['url']}/cancel").status_code == 200
        job = wait_for_job(client, running["id"])
        stopped = time.time() - asked
        assert job["state"] == "cancelled" and job["images"] == [] and job["step"] < 150
        assert stopped < 10  # one step of the demo model takes a few hundredths of a second
        never = client.get(queued["url"]).json()
        assert never["state"] == "cancelled" and never["started"] is None
        assert client.post(f"{queued['url']}/cancel").status_code == 409  # already ended


def test_a_preview_is_served_while_a_job_runs(start_server):
    server = start_server()
    with server.client() as client:
        created = submit(client, steps=150, seed=4)
        deadline = time.time() + 60
        preview = None
        while time.time() < deadline:
            job = client.get(created["url"]).json()
            if job["preview_url"]:
                preview = client.get(job["preview_url"])
                break
            time.sleep(0.02)
        assert preview is not None and preview.status_code == 200
        assert open_png(preview.content).size == (128, 128)
        client.post(f"{created['url']}/cancel")
        wait_for_job(client, created["id"])
        assert client.get(f"{created['url']}/preview").status_code == 404


def test_schedule_hires_and_variation_fields(client):
    job = wait_for_job(client, submit(client, sampler="Euler", schedule="Karras", width=64, height=64, seed=2,
                                      hires_scale=2, hires_upscaler="Latent (bicubic)", hires_steps=2,
                                      hires_strength=0.5, subseed=9, subseed_strength=0.25)["id"])
    assert job["state"] == "done", job["error"]
    info = job["images"][0]
    assert (info["width"], info["height"]) == (128, 128)
    for key in ("Schedule type: Karras", "Hires upscale: 2", "Hires upscaler: Latent (bicubic)", "Hires steps: 2",
                "Denoising strength: 0.5", "Variation seed: 9", "Variation seed strength: 0.25"):
        assert key in info["infotext"]
    caps = client.get("/v1/capabilities").json()
    assert "Align Your Steps" in caps["schedule_types"] and "Lanczos" in caps["hires_upscalers"]
