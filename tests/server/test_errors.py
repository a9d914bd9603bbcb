"""Bad input to either API is a 4xx with a message that says what to do: never a 500, never a queued job."""

from __future__ import annotations

import base64

import pytest
from PIL import Image
from server_helpers import png_b64, wait_for_job

from sdxl.server.config import Limits

OK = {"prompt": "a red circle on a blue background", "steps": 2}
SMALL = Image.new("RGB", (64, 64), (200, 10, 10))


@pytest.fixture(scope="module")
def client(demo_server):
    with demo_server.client() as c:
        yield c


NATIVE_CASES = [
    ("not json", 400, "not valid JSON"),
    ([1, 2], 422, "valid dictionary"),
    ({"steps": 2}, 422, "prompt: Field required"),
    ({**OK, "colour": "red"}, 422, "colour: Extra inputs"),
    ({**OK, "width": 100}, 422, "width must be a positive multiple of 8"),
    ({**OK, "width": 4096}, 422, "over this server's limit of 2048"),
    ({**OK, "steps": 0}, 422, "steps: Input should be greater than or equal to 1"),
    ({**OK, "steps": 1000}, 422, "steps 1000 is over this server's limit of 150"),
    ({**OK, "batch_size": 100}, 422, "batch size 100 is over"),
    ({**OK, "seed": 2**40}, 422, "seed: Input should be less than"),
    ({**OK, "guidance_scale": "high"}, 422, "guidance_scale: Input should be a valid number"),
    ({**OK, "sampler": "Euler z"}, 422, "unknown sampler 'Euler z'"),
    ({**OK, "prompt_syntax": "markdown"}, 422, "prompt_syntax"),
    ({**OK, "model": "../../etc/passwd"}, 400, "paths, URLs and `..` are refused"),
    ({**OK, "model": "/root/model"}, 400, "paths, URLs and `..` are refused"),
    ({**OK, "model": "https://example.com/x.safetensors"}, 400, "paths, URLs and `..` are refused"),
    ({**OK, "model": "C:evil"}, 400, "paths, URLs and `..` are refused"),
    ({**OK, "model": "no-such-model"}, 422, "no model named 'no-such-model'"),
    ({**OK, "refiner": "no-such-refiner"}, 422, "refiner: no model named"),
    ({**OK, "image": "not base64!!"}, 400, "`image` is not valid base64"),
    ({**OK, "image": base64.b64encode(b"plain text, not an image").decode()}, 400, "not a readable image"),
    ({**OK, "image": ""}, 400, "must be a base64-encoded image"),
    ({**OK, "mask": png_b64(SMALL)}, 422, "`mask` needs an `image`"),
    ({**OK, "image": png_b64(SMALL), "mask": png_b64(Image.new("L", (32, 32)))}, 422, "the mask is 32x32"),
    ({**OK, "image": png_b64(SMALL), "strength": 2}, 422, "strength: Input should be less than or equal to 1"),
    ({**OK, "refiner": "demo-refiner", "refiner_switch_at": 1.5}, 422, "refiner_switch_at"),
    ({**OK, "prompt": "x" * 30_000}, 422, "prompt has 30000 characters"),
    ({**OK, "width": 1536, "hires_scale": 2}, 422, "the hires fix makes the width 3072 pixels"),
    ({**OK, "hires_scale": 2, "hires_upscaler": "ESRGAN"}, 422, "unknown hires upscaler 'ESRGAN'"),
    ({**OK, "schedule": "wobbly"}, 422, "unknown schedule type 'wobbly'"),
    ({**OK, "sampler": "DDIM", "schedule": "Karras"}, 422, "schedule"),
    ({**OK, "image": png_b64(SMALL), "hires_scale": 2}, 422, "hires"),
    ({**OK, "sampler": "LCM", "steps": 60}, 422, "steps must be at most 50 with the LCM sampler"),
    ({**OK, "sampler": "LCM", "steps": 4, "hires_scale": 1.5, "hires_steps": 30, "hires_strength": 0.5}, 422,
     "gives the hires pass a schedule of 60"),
    ({**OK, "hires_scale": 2, "hires_refiner_pass": "all"}, 422, "hires_refiner_pass must be one of 'first pass'"),
]


@pytest.mark.parametrize("body, status, message", NATIVE_CASES, ids=[c[2][:40] for c in NATIVE_CASES])
def test_native_bad_requests(client, body, status, message):
    before = client.get("/v1/jobs").json()["total"]
    if isinstance(body, str):
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == before  # nothing was queued


def test_nan_in_json_is_refused(client):
    body = '{"prompt": "x", "guidance_scale": NaN}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "guidance_scale" in response.json()["detail"]


A1111_CASES = [
    ("/sdapi/v1/txt2img", "{", 400, "not valid JSON"),
    ("/sdapi/v1/txt2img", {"steps": 2, "width": 100}, 422, "width must be a positive multiple of 8"),
    ("/sdapi/v1/txt2img", {"steps": 2, "sampler_name": "Euler z"}, 422, "unknown sampler 'Euler z'"),
    ("/sdapi/v1/txt2img", {"steps": 2, "scheduler": "wobbly"}, 422, "unknown schedule type 'wobbly'"),
    ("/sdapi/v1/txt2img", {"steps": 80, "sampler_name": "LCM"}, 422, "steps must be at most 50 with the LCM sampler"),
    ("/sdapi/v1/txt2img", {"steps": 2, "script_name": "x/y plot"}, 422, "script 'x/y plot' not found"),
    ("/sdapi/v1/txt2img", {"steps": 2, "override_settings": {"sd_model_checkpoint": "../x"}}, 400, "refused"),
    ("/sdapi/v1/txt2img", {"steps": 2, "refiner_checkpoint": "nope"}, 422, "refiner: no model named"),
    ("/sdapi/v1/img2img", {"steps": 2}, 422, "img2img needs `init_images`"),
    ("/sdapi/v1/img2img", {"init_images": ["@@@"]}, 400, "`init_images[0]` is not valid base64"),
    ("/sdapi/v1/img2img", {"init_images": [png_b64(SMALL)], "mask": png_b64(Image.new("L", (8, 8)))}, 422,
     "the mask is 8x8"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "no-such-model"}, 422, "no model named"),
    ("/sdapi/v1/options", {"hires_fix_refiner_pass": "all"}, 422, "hires_fix_refiner_pass must be one of"),
    ("/sdapi/v1/txt2img", {"steps": 2, "enable_hr": True, "override_settings": {"hires_fix_refiner_pass": "x"}}, 422,
     "hires_fix_refiner_pass must be one of"),
    ("/sdapi/v1/png-info", {"image": "bm90IGFuIGltYWdl"}, 400, "not a readable image"),
]


@pytest.mark.parametrize("path, body, status, message", A1111_CASES, ids=[c[3][:40] for c in A1111_CASES])
def test_a1111_bad_requests(client, path, body, status, message):
    if isinstance(body, str):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_unknown_jobs_and_images_are_404(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.post("/v1/jobs/nope/cancel").status_code == 404
    assert client.get("/v1/jobs/nope/images/0").status_code == 404
    job = wait_for_job(client, client.post("/v1/jobs", json={**OK, "steps": 1}).json()["id"])
    response = client.get(f"/v1/jobs/{job['id']}/images/1")
    assert response.status_code == 404 and "has 1 image(s)" in response.json()["detail"]


def test_bodies_over_the_limit_are_413(start_server):
    server = start_server(limits=Limits(max_body_bytes=2000))
    with server.client() as client:
        response = client.post("/v1/jobs", json={**OK, "prompt": "x" * 5000})
        assert response.status_code == 413 and "limit of 2000 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: counted while reading
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_input_images_over_the_pixel_limit_are_refused(start_server):
    server = start_server(limits=Limits(max_image_pixels=100 * 100))
    with server.client() as client:
        response = client.post("/v1/jobs", json={**OK, "image": png_b64(Image.new("RGB", (128, 128)))})
        assert response.status_code == 400 and "at most 10000" in response.json()["detail"]


def test_a_full_queue_is_429_and_frees_up(start_server):
    server = start_server(limits=Limits(max_queue=1))
    with server.client() as client:
        first = client.post("/v1/jobs", json={**OK, "steps": 150}).json()
        deadline_ok = False
        for _ in range(400):  # the first job starts running; the queue is empty again
            if client.get(first["url"]).json()["state"] == "running":
                deadline_ok = True
                break
        assert deadline_ok
        second = client.post("/v1/jobs", json=OK)
        assert second.status_code == 202
        third = client.post("/v1/jobs", json=OK)
        assert third.status_code == 429 and "queue is full" in third.json()["detail"]
        assert third.headers["retry-after"] == "5"
        client.post(f"{first['url']}/cancel")
        wait_for_job(client, second.json()["id"])
        assert client.post("/v1/jobs", json=OK).status_code == 202
