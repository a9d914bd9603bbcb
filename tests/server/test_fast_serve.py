"""`sdxl serve --fast`: the loaded model runs the fast path (pipe.optimize()) and its images stay those of the plain
path (fp32 on CPU: within the fast path's 2.5/255 bound)."""

from __future__ import annotations

import numpy as np
from server_helpers import open_png, wait_for_job

from sdxl.cli import build_parser
from sdxl.cli.serve import config_from_args
from sdxl.params import GenerationParams
from sdxl.runner import Runner


def test_fast_flag_reaches_the_config():
    assert config_from_args(build_parser().parse_args(["serve", "--fast"])).fast is True
    assert config_from_args(build_parser().parse_args(["serve"])).fast is False


def test_fast_server_keeps_the_images(start_server):
    server = start_server(fast=True)
    with server.client() as client:
        created = client.post("/v1/jobs", json={"prompt": "a red circle on a blue background", "seed": 3, "steps": 4})
        job = wait_for_job(client, created.json()["id"])
        image = open_png(client.get(job["images"][0]["url"]).content)
    assert server.service.runner.load("demo").fast_path is not None
    (plain,) = Runner("cpu").run(GenerationParams(prompt="a red circle on a blue background", seed=3, steps=4,
                                                  sampler=None, model="demo", width=None, height=None))
    diff = np.abs(np.asarray(image.convert("RGB")).astype(int) - np.asarray(plain.image).astype(int))
    assert diff.max() <= 2.5


def test_out_of_memory_drops_the_captured_graphs():
    """After an out-of-memory failure the worker asks the runner to drop the fast path's captured graphs (each holds
    its activations' memory)."""
    runner = Runner("cpu", fast=True)
    pipe = runner.load("demo")
    pipe._fast.runner.graphs["a signature"] = object()
    runner.drop_captures()
    assert not pipe._fast.runner.graphs
