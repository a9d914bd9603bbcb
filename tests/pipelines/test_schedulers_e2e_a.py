"""Each k-diffusion-port scheduler swapped into StableDiffusionXLPipeline gives diffusers' image (tiny checkpoint).

The swap is the seed notebooks' `X.from_config(pipe.scheduler.config)` on both sides (our class into our pipeline,
diffusers' into theirs). Second-order schedulers (Heun, DPM2, DPM2 a, DPM++ SDE) run 2N - 1 UNet passes; the
denoising_end cut counts passes as diffusers does.
"""

from __future__ import annotations

import pytest
from pipeline_parity import assert_changes, assert_images_match, call

import sdxl.schedulers.base as schedulers

SCHEDULERS = {
    "EulerAncestralDiscreteScheduler": {},
    "HeunDiscreteScheduler": {},
    "KDPM2DiscreteScheduler": {},
    "KDPM2AncestralDiscreteScheduler": {},
    "LMSDiscreteScheduler": {},
    "DPMSolverSDEScheduler": {"noise_sampler_seed": 3},  # diffusers' noise comes from this seed, not the generator
}
CASES = [{"num_inference_steps": 1}, {"num_inference_steps": 2}, {"num_inference_steps": 5, "denoising_end": 0.8}]


@pytest.fixture
def swapped(ours, theirs):
    """A function that swaps scheduler `name` into both pipelines; the originals come back afterwards."""
    import diffusers

    before = ours.scheduler, theirs.scheduler

    def swap(name: str, **options):
        if name == "DPMSolverSDEScheduler":
            pytest.importorskip("torchsde", reason="diffusers' DPMSolverSDEScheduler needs torchsde (test-only)")
        ours.scheduler = schedulers.scheduler_class(name).from_config(ours.scheduler.config, **options)
        theirs.scheduler = getattr(diffusers, name).from_config(theirs.scheduler.config, **options)
        return ours, theirs

    yield swap
    ours.scheduler, theirs.scheduler = before


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_swapped_scheduler_matches_diffusers(swapped, name, kwargs):
    ours, theirs = swapped(name, **SCHEDULERS[name])
    assert type(ours.scheduler).__module__.startswith("sdxl.")
    assert_images_match(call(ours, **kwargs), call(theirs, **kwargs))


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_four_steps_and_the_scheduler_matters(swapped, theirs, name):
    """4 steps match, and the swap changes diffusers' image (so the test would see a scheduler left unswapped)."""
    euler = call(theirs, num_inference_steps=4)
    ours, theirs = swapped(name)
    ref = call(theirs, num_inference_steps=4)
    assert_images_match(call(ours, num_inference_steps=4), ref)
    assert_changes(ref, euler)


def test_ancestral_noise_follows_the_generator(swapped):
    ours, theirs = swapped("EulerAncestralDiscreteScheduler")
    import torch

    for seed in (1, 2):
        kwargs = {"num_inference_steps": 3, "generator": torch.Generator().manual_seed(seed)}
        mine = call(ours, **kwargs)
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        assert_images_match(mine, call(theirs, **kwargs))
