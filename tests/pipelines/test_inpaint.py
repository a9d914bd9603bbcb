"""End-to-end parity of StableDiffusionXLInpaintPipeline with diffusers' on tiny checkpoints (fp32, CPU): the base
(4-channel UNet, latent blending), a 9-channel inpainting UNet, and the refiner (aesthetic-score time ids).

Every argument test also checks that the argument moves diffusers' image by more than the tolerance, so a pipeline
that ignored it would fail.
"""

from __future__ import annotations

import inpaint_fixtures as fx
import numpy as np
import pytest
import torch
from inpaint_fixtures import SIZE, call, test_image, test_mask
from PIL import Image
from pipeline_parity import assert_changes, assert_images_match, to_numpy

# the session fixtures of inpaint_fixtures, registered in this module
tiny_inpaint, ours_base, theirs_base, ours_nine, theirs_nine, ours_refiner, theirs_refiner = (
    fx.tiny_inpaint, fx.ours_base, fx.theirs_base, fx.ours_nine, fx.theirs_nine, fx.ours_refiner, fx.theirs_refiner
)

PAIRS = {"base": ("ours_base", "theirs_base"), "nine": ("ours_nine", "theirs_nine")}


@pytest.fixture(params=list(PAIRS))
def pair(request):
    """(ours, theirs, kind) for the 4-channel base and the 9-channel inpainting UNet."""
    mine, ref = PAIRS[request.param]
    return request.getfixturevalue(mine), request.getfixturevalue(ref), request.param


def check(ours, theirs, baseline=None, **kwargs):
    mine, ref = call(ours, **kwargs), call(theirs, **kwargs)
    assert_images_match(mine, ref)
    if baseline is not None:
        assert_changes(ref, baseline)
    return mine, ref


@pytest.fixture(scope="module")
def baselines(theirs_base, theirs_nine):
    """diffusers' np images with every argument at its default, per UNet kind."""
    return {"base": call(theirs_base), "nine": call(theirs_nine)}


def original() -> np.ndarray:
    """The input image as a (1, H, W, 3) float array, what an inpainting that did nothing would return."""
    return (np.asarray(test_image(), dtype=np.float32) / 255)[None]


def test_our_components_are_ours(ours_nine, ours_base):
    for pipe in (ours_nine, ours_base):
        modules = {name: type(c).__module__ for name, c in pipe.components.items() if c is not None}
        assert all(m.startswith("sdxl.") for m in modules.values()), modules
    assert ours_nine.unet.config.in_channels == 9 and ours_base.unet.config.in_channels == 4


def test_default_strength(pair, baselines):
    """strength=0.9999 (diffusers' default): image plus noise at the second timestep, not pure noise."""
    ours, theirs, kind = pair
    _mine, ref = check(ours, theirs)
    assert_changes(ref, original())
    np.testing.assert_array_equal(ref, baselines[kind])  # the default is deterministic


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_strength(pair, baselines, strength):
    ours, theirs, kind = pair
    check(ours, theirs, baselines[kind], strength=strength)


def test_padding_mask_crop(pair):
    """Inpaint only the box around the mask (at full resolution) and paste it back into the original image."""
    ours, theirs, kind = pair
    pad = {"base": 4, "nine": 16}[kind]
    baseline = call(theirs, output_type="pil")
    mine, _ref = check(ours, theirs, baseline, padding_mask_crop=pad, output_type="pil")
    # outside the mask, the original pixels come back untouched
    keep = np.asarray(test_mask().convert("L")) == 0
    assert np.array_equal(to_numpy(mine)[0][keep], np.asarray(test_image())[keep])


def test_masked_image_latents(ours_nine, theirs_nine, baselines):
    """Given masked-image latents replace the pipeline's own VAE encoding of the masked image (9 channels)."""
    other = torch.from_numpy(original()[0].copy()).permute(2, 0, 1)[None].flip(-1) * 2 - 1  # mirrored image
    with torch.no_grad():
        latents = theirs_nine.vae.encode(other).latent_dist.mode() * theirs_nine.vae.config.scaling_factor
    check(ours_nine, theirs_nine, baselines["nine"], masked_image_latents=latents)


def _box(size=SIZE):
    """A different mask from the default one, as a (H, W) float array in [0, 1]."""
    mask = np.zeros((size, size), dtype=np.float32)
    mask[8:40, 20:56] = 1.0
    return mask


MASK_FORMS = {
    "pil_L": lambda: Image.fromarray((_box() * 255).astype(np.uint8), "L"),
    "np_hw": _box,
    "pt_b1hw": lambda: torch.from_numpy(_box())[None, None],
}


@pytest.mark.parametrize("form", list(MASK_FORMS))
def test_mask_forms(pair, baselines, form):
    ours, theirs, kind = pair
    check(ours, theirs, baselines[kind], mask_image=MASK_FORMS[form]())


def test_image_forms(ours_nine, theirs_nine):
    """The image as a numpy array and as a tensor in [0, 1]: the same image as the PIL input gives."""
    ours, theirs = ours_nine, theirs_nine
    pil_result = call(ours)
    array = original()
    for image in (array, torch.from_numpy(array).permute(0, 3, 1, 2)):
        mine, _ref = check(ours, theirs, image=image)
        assert_images_match(mine, pil_result)


def test_blurred_mask(pair, baselines, blur_factor=4):
    """`pipe.mask_processor.blur` (PIL Gaussian blur) before the call: the mask's edge moves after binarising."""
    ours, theirs, kind = pair
    mask_ours = ours.mask_processor.blur(test_mask(), blur_factor=blur_factor)
    mask_theirs = theirs.mask_processor.blur(test_mask(), blur_factor=blur_factor)
    assert np.array_equal(np.asarray(mask_ours), np.asarray(mask_theirs))
    mine = call(ours, mask_image=mask_ours)
    ref = call(theirs, mask_image=mask_theirs)
    assert_images_match(mine, ref)
    assert_changes(ref, baselines[kind])


@pytest.mark.parametrize(
    ("kind", "output_type"), [("base", "pil"), ("nine", "pil"), ("nine", "pt"), ("base", "latent"), ("nine", "latent")]
)
def test_output_types(request, kind, output_type):
    """("np" is what every other test compares.)"""
    ours, theirs = (request.getfixturevalue(n) for n in PAIRS[kind])
    mine, ref = call(ours, output_type=output_type), call(theirs, output_type=output_type)
    assert type(mine) is type(ref)
    assert_images_match(mine, ref)
    if output_type == "pil":
        assert mine[0].size == (SIZE, SIZE) and mine[0].mode == "RGB"


def test_return_dict_false(ours_nine, theirs_nine):
    kwargs = {"prompt": "a cat", "image": test_image(), "mask_image": test_mask(), "num_inference_steps": 3, "output_type": "np"}
    mine = ours_nine(**kwargs, return_dict=False, generator=torch.Generator().manual_seed(0))
    ref = theirs_nine(**kwargs, return_dict=False, generator=torch.Generator().manual_seed(0))
    assert isinstance(mine, tuple) and len(mine) == 1
    assert_images_match(mine[0], ref[0])


def test_batch_with_generator_list(pair, baselines):
    """Two images per prompt from two generators: the image is encoded once, with the first generator."""
    ours, theirs, _kind = pair
    generators = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]
    mine = call(ours, num_images_per_prompt=2, generator=generators())
    ref = call(theirs, num_images_per_prompt=2, generator=generators())
    assert mine.shape[0] == 2
    assert_images_match(mine, ref)
    assert_changes(ref[1:], ref[:1])


def test_user_latents_are_pure_noise(pair, baselines):
    ours, theirs, kind = pair
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(7))
    check(ours, theirs, baselines[kind], latents=noise)


def test_no_guidance(pair, baselines):
    """guidance_scale 1: no [uncond; cond] doubling of the mask (the blend reads the mask undoubled)."""
    ours, theirs, kind = pair
    check(ours, theirs, baselines[kind], guidance_scale=1.0)


def test_micro_conditioning(pair, baselines):
    ours, theirs, kind = pair
    check(
        ours, theirs, baselines[kind],
        original_size=(32, 48), crops_coords_top_left=(4, 8), target_size=(64, 48),
        negative_original_size=(16, 16), negative_target_size=(32, 32),
    )


def test_denoising_start_on_pixels(pair, baselines):
    """denoising_start without a base: the encoded image itself is the starting point (no noise added)."""
    ours, theirs, kind = pair
    check(ours, theirs, baselines[kind], denoising_start=0.5)


def test_callback_sees_mask_and_masked_image_latents(pair):
    ours, theirs, _kind = pair
    names = ["latents", "mask", "masked_image_latents"]

    def recorder(store):
        def callback(pipe, i, t, tensors):
            store.append({k: v.clone() for k, v in tensors.items()})
            return {}

        return callback

    seen_ours, seen_theirs = [], []
    call(ours, callback_on_step_end=recorder(seen_ours), callback_on_step_end_tensor_inputs=names)
    call(theirs, callback_on_step_end=recorder(seen_theirs), callback_on_step_end_tensor_inputs=names)
    assert len(seen_ours) == len(seen_theirs) == 3
    for a, b in zip(seen_ours, seen_theirs):
        for name in names:
            torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0)
    assert seen_ours[0]["mask"].shape == (2, 1, SIZE // 2, SIZE // 2)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("base", "HeunDiscreteScheduler"), ("base", "EulerAncestralDiscreteScheduler"), ("nine", "DPMSolverMultistepScheduler")],
)
def test_other_schedulers(request, baselines, kind, name):
    """The re-noising of the kept area follows each scheduler's add_noise step-index rules (Heun: two passes per
    step; Euler-a: noise drawn every step)."""
    import diffusers

    import sdxl

    ours, theirs = (request.getfixturevalue(n) for n in PAIRS[kind])
    ours = type(ours)(**{**ours.components, "scheduler": getattr(sdxl, name).from_config(ours.scheduler.config)})
    ours.set_progress_bar_config(disable=True)
    theirs = type(theirs)(
        **{**theirs.components, "scheduler": getattr(diffusers, name).from_config(theirs.scheduler.config)},
        add_watermarker=False,
    )
    theirs.set_progress_bar_config(disable=True)
    check(ours, theirs, baselines[kind], strength=0.7)


# ---- the refiner, and the base + refiner ensemble from the SDXL guide -------------------------------------------------


def test_refiner_inpaint_with_aesthetic_scores(ours_refiner, theirs_refiner):
    """The refiner as an inpainting pipeline: its time ids end with the aesthetic score (requires_aesthetics_score)."""
    assert ours_refiner.config.requires_aesthetics_score and ours_refiner.text_encoder is None
    baseline = call(theirs_refiner)
    check(ours_refiner, theirs_refiner)
    check(ours_refiner, theirs_refiner, baseline, aesthetic_score=3.0, negative_aesthetic_score=7.0)


def test_base_refiner_ensemble(ours_base, theirs_base, tiny_refiner):
    """The guide's inpainting ensemble at high_noise_frac 0.7: the base inpaints the first 70% of the schedule and
    returns latents, the refiner (loaded with the base's text_encoder_2 and VAE) inpaints the rest from them."""
    import diffusers

    from sdxl.pipelines.inpaint import StableDiffusionXLInpaintPipeline

    high_noise_frac = 0.7
    kwargs = {"prompt": "A majestic tiger sitting on a bench", "mask_image": test_mask(), "num_inference_steps": 10}

    def run(base, cls, **options):
        refiner = cls.from_pretrained(
            tiny_refiner[0], text_encoder_2=base.text_encoder_2, vae=base.vae, torch_dtype=torch.float32, **options
        )
        refiner.set_progress_bar_config(disable=True)
        assert refiner.vae is base.vae and refiner.text_encoder_2 is base.text_encoder_2
        generator = torch.Generator().manual_seed(0)
        latents = base(
            image=test_image(), denoising_end=high_noise_frac, output_type="latent", generator=generator, **kwargs
        ).images
        image = refiner(image=latents, denoising_start=high_noise_frac, generator=generator, output_type="np", **kwargs)
        return latents, image.images

    mine_latents, mine = run(ours_base, StableDiffusionXLInpaintPipeline)
    ref_latents, ref = run(theirs_base, diffusers.StableDiffusionXLInpaintPipeline, add_watermarker=False)
    assert_images_match(mine_latents, ref_latents)
    assert_images_match(mine, ref)
    ref_full = call(theirs_base, prompt=kwargs["prompt"], num_inference_steps=10)
    assert_changes(ref, ref_full)  # the refiner's second stage is not the base's own last 30%
