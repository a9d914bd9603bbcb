"""A failing job fails alone: out of memory, a bug, or a NaN decode end that job with a clear error, and the server
serves the next job."""

from __future__ import annotations

import pytest
import torch
from server_helpers import wait_for_job

from sdxl.runner import Runner

PROMPT = "a red circle on a blue background"


class FaultyRunner(Runner):
    """The real runner, except for prompts that ask for a fault."""

    def run(self, params, **kwargs):
        if params.prompt == "oom":
            self.held = torch.zeros(1024, 1024)  # something the failure leaves behind for the server to free
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if params.prompt == "cpu-oom":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")
        if params.prompt == "bug":
            raise KeyError("a bug")
        if params.prompt == "nan":
            pipe = self.load(params.model)
            decode = pipe.vae.decode

            def nan_decode(latents, *args, **kw):
                out = decode(latents, *args, **kw)
                out.sample.fill_(float("nan"))
                return out

            pipe.vae.decode = nan_decode
            try:
                return super().run(params, **kwargs)
            finally:
                pipe.vae.decode = decode
        return super().run(params, **kwargs)


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(runner=FaultyRunner("cpu"), batch_jobs=False)  # faults are injected per job


@pytest.mark.parametrize("prompt, message", [
    ("oom", "out of memory while running this job"),
    ("cpu-oom", "out of memory while running this job"),
    ("bug", "internal error (KeyError"),
    ("nan", "decoded to all black"),
])
def test_a_failed_job_does_not_stop_the_server(server, prompt, message):
    with server.client() as client:
        bad = client.post("/v1/jobs", json={"prompt": prompt, "steps": 2}).json()
        good = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 2, "seed": 1}).json()
        failed = wait_for_job(client, bad["id"])
        assert failed["state"] == "failed" and message in failed["error"] and failed["images"] == []
        done = wait_for_job(client, good["id"])
        assert done["state"] == "done" and len(done["images"]) == 1


@pytest.mark.parametrize("prompt, status", [("oom", 503), ("nan", 500), ("bug", 500)])
def test_the_a1111_endpoint_answers_with_the_failure(server, prompt, status):
    with server.client() as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2})
        assert response.status_code == status and response.json()["detail"]
        assert client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2}).status_code == 200
