"""Requests batched into one pipeline call give each request's images as if it ran alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdxl.batching import batch_key, run_batch
from sdxl.params import GenerationParams
from sdxl.runner import Runner


def demo(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red circle on a blue background", "steps": 6, "sampler": None,
                               "model": "demo", "width": None, "height": None, "seed": 1, **kw})


@pytest.fixture(scope="module")
def runner():
    return Runner("cpu")


def test_batch_keys():
    assert batch_key(demo()) == batch_key(demo(prompt="a green star", seed=9, guidance_scale=7.5, batch_size=3))
    assert batch_key(demo()) != batch_key(demo(guidance_scale=1.0))  # guidance on/off changes the UNet batch
    assert batch_key(demo()) != batch_key(demo(negative_prompt="blurry"))  # "" is encoded as zeros, text is not
    assert batch_key(demo()) != batch_key(demo(steps=7))
    assert batch_key(demo()) != batch_key(demo(sampler="Euler a"))
    assert batch_key(demo(refiner="demo-refiner", refiner_switch_at=0.8)) is None
    assert batch_key(demo(prompt="word " * 16)) is None  # could need a second 77-token window
    assert batch_key(demo(prompt="\u00e9" * 40)) is None  # 80 UTF-8 bytes


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max())


def test_each_request_gets_its_own_images_as_if_alone(runner):
    requests = [
        demo(seed=1, guidance_scale=5.0),
        demo(prompt="a large yellow star on a purple background", seed=7, guidance_scale=7.5, batch_size=2),
        demo(prompt="a green square", seed=3, guidance_scale=3.3),
    ]
    batched = run_batch(runner, requests)
    assert [len(images) for images in batched] == [1, 2, 1]
    for images, params in zip(batched, requests):
        alone = runner.run(params)
        for got, expected in zip(images, alone):
            assert got.params == expected.params  # seed, size, sampler as the job alone records them
            # batched matrix products may round differently in the last bit: at most 1/255 on a pixel
            assert _max_diff(got.image, expected.image) <= 1


def test_requests_that_cannot_share_a_call_are_refused(runner):
    with pytest.raises(ValueError, match="cannot share a call"):
        run_batch(runner, [demo(), demo(steps=3)])


def test_guidance_per_image_in_the_pipeline(runner):
    pipe = runner.load("demo")
    prompts = ["a red circle on a blue background", "a green square on a white background"]
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    both = pipe(prompts, guidance_scale=[3.0, 8.0], num_inference_steps=4, generator=generators).images
    for i, scale in enumerate((3.0, 8.0)):
        alone = pipe(prompts[i], guidance_scale=scale, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(i)).images[0]
        assert _max_diff(both[i], alone) <= 1
    with pytest.raises(ValueError, match="has 3 values, but this call makes 2 images"):
        pipe(prompts, guidance_scale=[3.0, 8.0, 5.0], num_inference_steps=1)
    with pytest.raises(ValueError, match="mixes guided"):
        pipe(prompts, guidance_scale=[1.0, 8.0], num_inference_steps=1)


def test_lora_requests_run_alone():
    from sdxl.batching import batch_key
    from sdxl.params import GenerationParams

    assert batch_key(GenerationParams("a cat", loras=(("style", 0.5),))) is None
    assert batch_key(GenerationParams("a cat <lora:style:0.5>", prompt_syntax="a1111")) is None
    assert batch_key(GenerationParams("a cat <lora:style:0.5>")) is not None  # plain syntax: just text
