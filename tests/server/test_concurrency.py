"""Concurrent clients each get their own images: 8 threads x 2 jobs, every image equal to the same job run alone."""

from __future__ import annotations

import threading

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
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(alone.image))
