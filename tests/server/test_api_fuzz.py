"""Property-based fuzz of both APIs' request bodies: whatever a client sends, the answer is never a 5xx, and no job
that was accepted fails with an internal error."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from server_helpers import png_b64

from sdxl.server.config import Limits

SMALL = Image.new("RGB", (64, 64), (200, 10, 10))
IMAGES = [png_b64(SMALL), png_b64(SMALL, data_url=True), png_b64(SMALL, fmt="WEBP"),
          png_b64(Image.new("RGBA", (64, 64)), data_url=True), png_b64(Image.new("L", (32, 32))), "", "!!!",
          base64.b64encode(b"not an image").decode(), "data:image/png;base64,", "data:text/plain;base64,aGk="]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
sizes = st.sampled_from([None, 0, -8, 8, 63, 64, 96, 128, 130, 256, 264, 4096, 2**40]) | json_values
small_ints = st.integers(-3, 10) | json_values
fractions = st.sampled_from([None, -0.5, 0, 0.01, 0.5, 0.99, 1, 1.5]) | json_values
images = st.sampled_from(IMAGES) | json_values
texts = st.text(max_size=40) | st.sampled_from(["(red:1.5) circle", "[[blue]]", "a+ b-- (c)1.2", "((("]) | json_values
models = st.sampled_from([None, "demo", "demo-refiner", "../x", "/etc/passwd", "http://x", "missing", "None", ""])
samplers = st.sampled_from([None, "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "nope", ""]) | json_values

NATIVE = {
    "prompt": texts, "negative_prompt": texts, "prompt_2": texts, "model": models | json_values, "image": images,
    "mask": images, "strength": fractions, "mask_blur": small_ints, "padding_mask_crop": small_ints,
    "refiner": models, "refiner_switch_at": fractions, "sampler": samplers, "seed": st.integers(-5, 2**33) | json_values,
    "width": sizes, "height": sizes, "steps": small_ints, "guidance_scale": fractions | st.floats(-10, 200),
    "prompt_syntax": st.sampled_from(["none", "a1111", "compel", "x"]) | json_values,
    "long_prompts": json_values, "batch_size": small_ints, "unknown_key": json_values,
}
A1111 = {
    "prompt": texts, "negative_prompt": texts, "styles": json_values, "seed": st.integers(-5, 2**33) | json_values,
    "subseed": small_ints, "subseed_strength": fractions, "sampler_name": samplers, "sampler_index": samplers,
    "scheduler": st.sampled_from([None, "automatic", "Karras", "exponential", "nope"]) | json_values,
    "batch_size": small_ints, "n_iter": small_ints, "steps": small_ints, "cfg_scale": fractions, "width": sizes,
    "height": sizes, "denoising_strength": fractions, "enable_hr": json_values,
    "override_settings": st.fixed_dictionaries({}, optional={"sd_model_checkpoint": models | json_values}) | json_values,
    "refiner_checkpoint": models, "refiner_switch_at": fractions, "send_images": json_values,
    "script_name": st.sampled_from([None, "", "x/y plot"]) | json_values, "init_images": st.lists(images, max_size=2)
    | json_values, "mask": images, "mask_blur": small_ints, "resize_mode": small_ints, "inpaint_full_res": json_values,
    "inpaint_full_res_padding": small_ints, "inpainting_mask_invert": small_ints, "include_init_images": json_values,
    "alwayson_scripts": json_values, "restore_faces": json_values,
}


VALID = {"prompt": "a red circle on a blue background", "steps": 2, "width": 64, "height": 64,
         "init_images": [IMAGES[0]]}


def bodies(fields: dict):
    """Anything: random field sets, a valid body with one or two fields changed, other JSON, other bytes."""
    mutated = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})
    ).map(lambda changes: {**{k: v for k, v in VALID.items() if k in fields}, **changes})
    return mutated | st.fixed_dictionaries({}, optional=fields) | json_values | st.binary(max_size=30)


@pytest.fixture(scope="module")
def client(start_server):
    # small limits keep the accepted jobs cheap on the demo model
    server = start_server(limits=Limits(max_width=256, max_height=256, max_steps=3, max_batch=2, max_queue=50))
    with server.client() as c:
        yield c
        failures = c.get("/v1/jobs", params={"state": "failed", "limit": 200}).json()["jobs"]
        internal = [j["error"] for j in failures if j["error"].startswith("internal error")]
        assert not internal, internal
        # the fuzz reached the generation path too, not only the validation (a fuzz that cannot fail is a defect)
        assert c.get("/v1/jobs", params={"state": "done"}).json()["total"] >= 10


def _post(client, path, body):
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=bodies(NATIVE))
def test_native_jobs_never_answer_5xx(client, body):
    response = _post(client, "/v1/jobs", body)
    assert response.status_code < 500, response.text
    assert response.status_code in (202, 400, 422, 429), response.text


@FUZZ
@given(body=bodies(A1111), path=st.sampled_from(["/sdapi/v1/txt2img", "/sdapi/v1/img2img"]))
def test_a1111_generation_never_answers_5xx(client, path, body):
    response = _post(client, path, body)
    assert response.status_code < 500, response.text


@FUZZ
@given(body=bodies({"sd_model_checkpoint": models | json_values, "image": images, "x": json_values}),
       path=st.sampled_from(["/sdapi/v1/options", "/sdapi/v1/png-info", "/v1/jobs/x/cancel"]))
def test_other_endpoints_never_answer_5xx(client, path, body):
    assert _post(client, path, body).status_code < 500
