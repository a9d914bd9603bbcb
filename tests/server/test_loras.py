"""LoRAs over HTTP: `<lora:NAME:W>` tags and the native `loras` field resolve inside --lora-dir only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from safetensors.torch import save_file
from server_helpers import wait_for_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lora_files import kohya_lora  # noqa: E402  (tests/lora_files.py)

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def lora_server(start_server, tmp_path_factory):
    from sdxl import StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("loras")
    folder = root / "loras"
    (folder / "styles").mkdir(parents=True)
    pipe = StableDiffusionXLPipeline.from_pretrained("demo")
    save_file(kohya_lora(pipe.unet, {}, seed=3), str(folder / "styles" / "shiny.safetensors"))
    (root / "outside.safetensors").write_bytes(b"\0" * 16)
    os.symlink(root / "outside.safetensors", folder / "escape.safetensors")
    return start_server(lora_dir=folder)


def test_a1111_prompt_tags_apply_a_lora_and_record_its_hash(lora_server):
    webuiapi = pytest.importorskip("webuiapi")
    parsed = urlparse(lora_server.url)
    api = webuiapi.WebUIApi(host=parsed.hostname, port=parsed.port, steps=4)
    assert [(lo["name"], lo["path"]) for lo in api.get_loras()] == [("shiny", "styles/shiny.safetensors")]
    plain = api.txt2img(prompt=PROMPT, seed=1, width=128, height=128)
    tagged = api.txt2img(prompt=PROMPT + " <lora:shiny:0.8>", seed=1, width=128, height=128)
    assert "Lora hashes" in tagged.info["infotexts"][0] and "Lora hashes" not in plain.info["infotexts"][0]
    assert plain.images[0].tobytes() != tagged.images[0].tobytes()


def test_native_loras_field_and_capabilities(lora_server):
    with lora_server.client() as client:
        assert client.get("/v1/capabilities").json()["loras"] == ["shiny"]
        job = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 3, "seed": 2, "loras": [["shiny", 0.5]]})
        done = wait_for_job(client, job.json()["id"])
        assert done["state"] == "done" and "shiny" in done["images"][0]["infotext"]


@pytest.mark.parametrize("prompt, status, message", [
    (PROMPT + " <lora:../../outside:1>", 400, "paths, URLs and `..` are refused"),
    (PROMPT + " <lora:/etc/passwd:1>", 400, "paths, URLs and `..` are refused"),
    (PROMPT + " <lora:escape:1>", 422, "no LoRA named 'escape'"),
    (PROMPT + " <lora:missing:1>", 422, "the server has: shiny"),
    (PROMPT + " <lora:shiny:1:2:3>", 422, "is not understood"),
])
def test_lora_names_outside_the_folder_are_refused(lora_server, prompt, status, message):
    with lora_server.client() as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2})
        assert response.status_code == status and message in response.json()["detail"]
        native = client.post("/v1/jobs", json={"prompt": "x", "steps": 2, "loras": [["../../outside", 1]]})
        assert native.status_code == 400


def test_without_a_lora_folder_tags_are_a_clear_error(demo_server):
    with demo_server.client() as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT + " <lora:shiny:1>", "steps": 2})
        assert response.status_code == 422 and "no LoRA folder (sdxl serve --lora-dir)" in response.json()["detail"]
