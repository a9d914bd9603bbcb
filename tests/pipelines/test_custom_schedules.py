"""`pipe(..., timesteps=[...])` and `pipe(..., sigmas=[...])` on all three pipelines, as diffusers 0.42 takes them.

Every scheduler is asked for both kinds of custom schedule: where diffusers refuses (ValueError), we refuse with the
same error; where it accepts, the images are diffusers' (text-to-image, image-to-image with a strength cut,
inpainting).
"""

from __future__ import annotations

import re

import diffusers
import pytest
import torch
from img2img_fixtures import i2i_call, ours_i2i, theirs_i2i  # noqa: F401  (fixtures)
from inpaint_fixtures import call as inpaint_call
from inpaint_fixtures import ours_base, theirs_base  # noqa: F401  (fixtures)
from pipeline_parity import assert_images_match, call

from sdxl.schedulers.base import scheduler_class

ALL = [
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler",
]
AYS_SDXL_TIMESTEPS = [999, 845, 730, 587, 443, 310, 193, 116, 53, 13]  # diffusers' AysSchedules
SIGMAS = [14.6146, 7.0, 3.0, 1.2, 0.4, 0.0]
CLASS = r"<class '[\w.]+'>"


def install(pipe, name: str, library: str) -> None:
    """`pipe.scheduler = <name>.from_config(pipe.scheduler.config)`, our class or diffusers' ("theirs")."""
    cls = scheduler_class(name) if library == "ours" else getattr(diffusers, name)
    # SDXL's Euler config has no EDM sigma range: give the training range
    extra = {"sigma_min": 0.0292, "sigma_max": 14.6146, "sigma_data": 1.0} if name.startswith("EDM") else {}
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


@pytest.fixture
def restore(ours, theirs):
    before = ours.scheduler, theirs.scheduler
    yield
    ours.scheduler, theirs.scheduler = before


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["timesteps", "sigmas"])
def test_refusals_match_diffusers(ours, theirs, restore, name, kind):
    """Where diffusers' scheduler takes no custom schedule of this kind, our pipeline raises its ValueError."""
    install(ours, name, "ours")
    install(theirs, name, "theirs")
    value = {"timesteps": [999, 500, 20], "sigmas": [10.0, 2.0, 0.0]}[kind]
    try:
        call(theirs, num_inference_steps=None, **{kind: value})
        refused = None
    except ValueError as e:
        refused = str(e)
    except Exception:  # noqa: BLE001  (EDMEuler takes sigmas only as a tensor, so a list fails deep inside)
        refused = None
    if refused is None:
        call(ours, num_inference_steps=None, **{kind: value})
        return
    with pytest.raises(ValueError) as ours_error:
        call(ours, num_inference_steps=None, **{kind: value})
    if "does not support custom" in refused:  # diffusers' own check (UniPC refuses from its set_timesteps)
        assert re.sub(CLASS, "<class>", str(ours_error.value)) == re.sub(CLASS, "<class>", refused)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("EulerDiscreteScheduler", {"sigmas": SIGMAS}),
        ("EulerDiscreteScheduler", {"timesteps": [999.0, 600.5, 301.0, 40.0]}),
        ("DPMSolverMultistepScheduler", {"timesteps": AYS_SDXL_TIMESTEPS}),
        ("HeunDiscreteScheduler", {"timesteps": [999, 500, 100]}),
        ("DDPMScheduler", {"timesteps": [999, 700, 300, 0]}),
        ("DPMSolverSinglestepScheduler", {"timesteps": [999, 750, 500, 250, 20]}),
    ],
)
def test_text2img_custom_schedules_match_diffusers(ours, theirs, restore, name, kwargs):
    install(ours, name, "ours")
    install(theirs, name, "theirs")
    assert_images_match(call(ours, **kwargs), call(theirs, **kwargs))


def test_edm_euler_custom_ramp_matches_diffusers(ours, theirs, restore):
    for pipe, library in ((ours, "ours"), (theirs, "theirs")):
        install(pipe, "EDMEulerScheduler", library)
    ramp = torch.tensor([0.0, 0.3, 0.7])  # EDMEuler reads sigmas as a ramp (diffusers needs a tensor)
    assert_images_match(call(ours, sigmas=ramp), call(theirs, sigmas=ramp))


@pytest.mark.parametrize("kwargs", [{"sigmas": SIGMAS}, {"timesteps": AYS_SDXL_TIMESTEPS}])
def test_img2img_custom_schedules_match_diffusers(ours_i2i, theirs_i2i, kwargs):  # noqa: F811
    name = "EulerDiscreteScheduler" if "sigmas" in kwargs else "DPMSolverMultistepScheduler"
    before = ours_i2i.scheduler, theirs_i2i.scheduler
    try:
        install(ours_i2i, name, "ours")
        install(theirs_i2i, name, "theirs")
        mine = i2i_call(ours_i2i, strength=0.6, **kwargs)
        assert_images_match(mine, i2i_call(theirs_i2i, strength=0.6, **kwargs))
    finally:
        ours_i2i.scheduler, theirs_i2i.scheduler = before


def test_inpaint_custom_sigmas_match_diffusers(ours_base, theirs_base):  # noqa: F811
    kwargs = {"sigmas": SIGMAS, "strength": 0.7}
    assert_images_match(inpaint_call(ours_base, **kwargs), inpaint_call(theirs_base, **kwargs))
