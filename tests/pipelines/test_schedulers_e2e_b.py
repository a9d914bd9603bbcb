"""End to end: DDIM, DDPM, PNDM, DPM-Solver singlestep, DEIS and UniPC swapped into our pipeline give diffusers' image.

Each scheduler is built the seeds' way, `X.from_config(pipe.scheduler.config)` from SDXL's Euler config, on both
sides (our class in our pipeline, diffusers' class in theirs), on the tiny checkpoint (fp32, CPU, 2/255).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call

from sdxl.schedulers.base import scheduler_class

NAMES = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
]


@pytest.fixture
def swap(ours, theirs):
    """Install scheduler `name` (built from each pipeline's current config) on both pipelines; restore afterwards."""
    before = ours.scheduler, theirs.scheduler

    def install(name: str, **overrides) -> None:
        ours.scheduler = scheduler_class(name).from_config(ours.scheduler.config, **overrides)
        theirs.scheduler = getattr(diffusers, name).from_config(theirs.scheduler.config, **overrides)

    yield install
    ours.scheduler, theirs.scheduler = before


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_scheduler_swap_matches_diffusers(ours, theirs, swap, name, steps):
    swap(name)
    assert type(ours.scheduler).__module__.startswith("sdxl.")
    mine, ref = call(ours, num_inference_steps=steps), call(theirs, num_inference_steps=steps)
    assert_images_match(mine, ref)


@pytest.mark.parametrize("name", ["EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"])
def test_edm_scheduler_swap_matches_diffusers(ours, theirs, swap, name):
    """The EDM schedulers in the pipeline: c_in-scaled input, 0.25 log(sigma) timesteps, EDM preconditioning."""
    swap(name, sigma_min=0.0292, sigma_max=14.6146, sigma_data=1.0)
    mine, ref = call(ours, num_inference_steps=3), call(theirs, num_inference_steps=3)
    assert_images_match(mine, ref)


@pytest.mark.parametrize("name", NAMES)
def test_denoising_end_matches_diffusers(ours, theirs, swap, name):
    swap(name)
    kwargs = {"num_inference_steps": 6, "denoising_end": 0.8, "output_type": "latent"}
    mine, ref = call(ours, **kwargs), call(theirs, **kwargs)
    assert_images_match(mine, ref)
    if name == "DPMSolverSinglestepScheduler":  # the cut really drops steps (once: each call costs seconds)
        assert_changes(ref, call(theirs, num_inference_steps=6, output_type="latent"))


def test_ddim_eta_matches_diffusers(ours, theirs, swap):
    """eta reaches DDIM's step (keyword-only there) and its noise comes from the call's generator, as in diffusers."""
    swap("DDIMScheduler")
    mine, ref = call(ours, num_inference_steps=4, eta=0.5), call(theirs, num_inference_steps=4, eta=0.5)
    assert_images_match(mine, ref)
    assert_changes(ref, call(theirs, num_inference_steps=4))
    other_seed = call(theirs, num_inference_steps=4, eta=0.5, generator=torch.Generator().manual_seed(1))
    assert_changes(other_seed, ref)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
        ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        ("DEISMultistepScheduler", {"solver_order": 3, "timestep_spacing": "trailing"}),
        (
            "DDIMScheduler",
            {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
        ),
    ],
    ids=["unipc_karras", "dpm_sde_karras", "deis_3_trailing", "ddim_trailing_zsnr"],
)
def test_common_options_match_diffusers(ours, theirs, swap, name, overrides):
    swap(name, **overrides)
    mine, ref = call(ours, num_inference_steps=4), call(theirs, num_inference_steps=4)
    assert_images_match(mine, ref)
