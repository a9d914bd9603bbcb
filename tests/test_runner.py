"""The runner keeps models loaded between jobs: nothing one job chooses may carry over into the next."""

from __future__ import annotations

from PIL import Image

from sdxl.params import GenerationParams
from sdxl.runner import Runner


def job(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red circle on a blue background", "steps": 2, "model": "demo",
                               "width": None, "height": None, "seed": 1, **kw})  # fmt: skip


def test_a_jobs_sampler_never_carries_over_to_the_next_in_any_mode():
    picture = Image.new("RGB", (128, 128), (30, 60, 200))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    fresh = Runner("cpu")
    own = fresh.run(job(sampler=None))[0].params.sampler  # the model's own sampler
    runner = Runner("cpu")
    assert runner.run(job(sampler="LCM"))[0].params.sampler == "LCM"
    img2img = runner.run(job(sampler=None, denoising_strength=0.5), image=picture)
    assert img2img[0].params.sampler == own
    assert runner.run(job(sampler="Euler a", denoising_strength=0.5), image=picture)[0].params.sampler == "Euler a"
    inpaint = runner.run(job(sampler=None, denoising_strength=0.5), image=picture, mask=mask)
    assert inpaint[0].params.sampler == own
    assert runner.run(job(sampler=None))[0].params.sampler == own
