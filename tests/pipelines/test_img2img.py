"""End-to-end parity of StableDiffusionXLImg2ImgPipeline with diffusers' on the tiny base checkpoint (fp32, CPU).

Every argument test also checks that the argument moves diffusers' image by more than the tolerance, so a pipeline
that ignored it would fail.
"""

from __future__ import annotations

import img2img_fixtures as fx
import numpy as np
import pytest
import torch
from img2img_fixtures import check, i2i_call, make_image
from pipeline_parity import assert_changes, assert_images_match, to_numpy

# the session fixtures of img2img_fixtures, registered in this module
ours_i2i, theirs_i2i = fx.ours_i2i, fx.theirs_i2i


@pytest.fixture(scope="module")
def baseline(theirs_i2i):
    """diffusers' image with every argument at its default (strength 0.3), np."""
    return i2i_call(theirs_i2i)


@pytest.fixture(scope="module")
def half_strength(theirs_i2i):
    return i2i_call(theirs_i2i, strength=0.5)


def test_our_components_are_ours(ours_i2i):
    modules = {name: type(c).__module__ for name, c in ours_i2i.components.items() if c is not None}
    assert all(m.startswith("sdxl.") for m in modules.values()), modules
    assert ours_i2i.config.requires_aesthetics_score is False
    assert ours_i2i.config.force_zeros_for_empty_prompt is True


def test_default_call(ours_i2i, baseline):
    assert_images_match(i2i_call(ours_i2i), baseline)
    # strength 0.3 keeps the input's content: the result is nearer the input than the input is to noise
    assert_changes(baseline, np.asarray(make_image(), dtype=np.float32)[None] / 255)


@pytest.mark.parametrize("strength", [0.3, 0.8, 1.0])
def test_strength(ours_i2i, theirs_i2i, half_strength, strength):
    check(ours_i2i, theirs_i2i, half_strength, strength=strength)


@pytest.mark.parametrize("output_type", ["pil", "pt", "latent"])
def test_output_types(ours_i2i, theirs_i2i, baseline, output_type):
    mine, ref = i2i_call(ours_i2i, output_type=output_type), i2i_call(theirs_i2i, output_type=output_type)
    assert type(mine) is type(ref)
    assert_images_match(mine, ref)
    if output_type == "pt":
        np.testing.assert_allclose(to_numpy(mine).transpose(0, 2, 3, 1), baseline, atol=1e-5)
    if output_type == "latent":
        assert mine.shape == (1, 4, 32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guidance_scale": 9.0},
        {"guidance_scale": 1.0},
        {"negative_prompt": "blurry, low quality"},
        {"guidance_rescale": 0.7},
        {"original_size": (128, 96)},
        {"crops_coords_top_left": (8, 16)},
        {"target_size": (32, 48)},
        {"negative_original_size": (32, 32), "negative_target_size": (48, 48)},
        {"denoising_end": 0.8, "strength": 1.0},
    ],
    ids=lambda k: "-".join(map(str, k)),
)
def test_arguments(ours_i2i, theirs_i2i, baseline, kwargs):
    mine, ref = i2i_call(ours_i2i, **kwargs), i2i_call(theirs_i2i, **kwargs)
    assert_images_match(mine, ref)
    assert_changes(ref, baseline)


def test_negative_crops_alone_change_nothing_in_the_base_layout(ours_i2i, theirs_i2i, baseline):
    """diffusers' base-layout negative ids use the positive crops (PITFALLS 5): negative crops change nothing."""
    kwargs = {"negative_crops_coords_top_left": (16, 16), "negative_original_size": (64, 64)}
    mine, ref = i2i_call(ours_i2i, **kwargs), i2i_call(theirs_i2i, **kwargs)
    assert_images_match(mine, ref)
    assert_images_match(ref, baseline)


def test_aesthetic_score_is_ignored_without_requires_aesthetics_score(ours_i2i, theirs_i2i, baseline):
    kwargs = {"aesthetic_score": 9.0, "negative_aesthetic_score": 1.0}
    assert_images_match(i2i_call(ours_i2i, **kwargs), i2i_call(theirs_i2i, **kwargs))
    assert_images_match(i2i_call(ours_i2i, **kwargs), baseline)


@pytest.mark.parametrize("form", ["numpy", "numpy_batch", "tensor01", "tensor11", "tensor_chw"])
def test_image_forms(ours_i2i, theirs_i2i, baseline, form):
    """numpy (H, W, C) / (B, H, W, C) in [0, 1], tensors (B, C, H, W) in [0, 1] or [-1, 1], (C, H, W): as PIL."""
    array = np.asarray(make_image(), dtype=np.float32) / 255
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    image = {
        "numpy": array,
        "numpy_batch": array[None],
        "tensor01": tensor[None],
        "tensor11": tensor[None] * 2 - 1,
        "tensor_chw": tensor,
    }[form]
    mine, ref = i2i_call(ours_i2i, image=image), i2i_call(theirs_i2i, image=image)
    assert_images_match(mine, ref)
    # the same pixels given as PIL give the same image: every form is read the same way
    np.testing.assert_allclose(ref, baseline, atol=1e-4)


def test_size_not_divisible_by_the_scale_factor_is_resized_down(ours_i2i, theirs_i2i, baseline):
    """diffusers resizes a 65x65 image (LANCZOS) to 64x64, a multiple of the VAE scale factor; so do we."""
    image = make_image(65)
    mine, ref = i2i_call(ours_i2i, image=image), i2i_call(theirs_i2i, image=image)
    assert mine.shape == ref.shape == (1, 64, 64, 3)
    assert_images_match(mine, ref)
    assert_changes(ref, baseline)


def test_other_size(ours_i2i, theirs_i2i):
    image = make_image(48)
    mine, ref = i2i_call(ours_i2i, image=image), i2i_call(theirs_i2i, image=image)
    assert mine.shape == (1, 48, 48, 3)
    assert_images_match(mine, ref)


def test_latent_input(ours_i2i, theirs_i2i, half_strength):
    """A 4-channel tensor skips the VAE encode: noised and denoised as it is."""
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5)) * 0.8
    mine, _ = check(ours_i2i, theirs_i2i, half_strength, image=latents, strength=0.5)
    assert mine.shape == (1, 64, 64, 3)


def test_latents_argument_is_the_start(ours_i2i, theirs_i2i, baseline):
    """`latents=` is taken as the start exactly (no noise added), as diffusers."""
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    check(ours_i2i, theirs_i2i, baseline, latents=latents)


@pytest.mark.parametrize("generators", ["one", "list"])
def test_num_images_per_prompt(ours_i2i, theirs_i2i, generators):
    """Two images per prompt: one generator draws both posterior samples at once; a list draws one per image."""

    def gen():
        if generators == "one":
            return torch.Generator().manual_seed(0)
        return [torch.Generator().manual_seed(s) for s in (0, 1)]

    kwargs = {"num_images_per_prompt": 2, "strength": 0.6}
    mine, ref = i2i_call(ours_i2i, generator=gen(), **kwargs), i2i_call(theirs_i2i, generator=gen(), **kwargs)
    assert mine.shape == (2, 64, 64, 3)
    assert_images_match(mine, ref)
    assert_changes(ref[:1], ref[1:])


def test_prompt_batch_with_image_batch(ours_i2i, theirs_i2i):
    """Two prompts, two images, two images per prompt, a list of four generators."""
    images = [make_image(seed=1), make_image(seed=2)]
    kwargs = {"prompt": ["a cat", "a dog"], "image": images, "num_images_per_prompt": 2, "strength": 0.6}
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    mine = i2i_call(ours_i2i, generator=gens, **kwargs)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    ref = i2i_call(theirs_i2i, generator=gens, **kwargs)
    assert mine.shape == (4, 64, 64, 3)
    assert_images_match(mine, ref)


def test_callback_on_step_end(ours_i2i, theirs_i2i, baseline):
    """The step-end callback sees and may replace the latents, as diffusers' (here: halves them at step 1)."""

    def halve(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if i == 1 else {}

    check(ours_i2i, theirs_i2i, baseline, callback_on_step_end=halve)


def test_prompt_syntax_matches_diffusers_on_the_same_embeddings(ours_i2i, theirs_i2i, baseline):
    """Our weighted-prompt syntax goes through the same call: diffusers given our weighted embeddings agrees."""
    prompt = "a (photo)1.5 of a cat--"
    embeds = ours_i2i.encode_prompt(prompt, prompt_syntax="compel")
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    mine = i2i_call(ours_i2i, prompt=prompt, prompt_syntax="compel")
    ref = i2i_call(theirs_i2i, prompt=None, **dict(zip(names, embeds)))
    assert_images_match(mine, ref)
    assert_changes(ref, baseline)


@pytest.mark.parametrize("generators", ["one", "list"])
def test_fp16_vae_encodes_in_fp32_like_diffusers(ours_i2i, theirs_i2i, generators):
    """An fp16 VAE with `force_upcast` encodes in fp32 (after the image is cast to fp16) and is fp16 again after."""
    import copy

    import diffusers

    from sdxl.pipelines.img2img_common import prepare_img2img_latents

    mine_vae = copy.deepcopy(ours_i2i.vae).half()
    ref_pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        **{**theirs_i2i.components, "vae": copy.deepcopy(theirs_i2i.vae).half()}, add_watermarker=False
    )
    assert mine_vae.config.force_upcast and ref_pipe.vae.config.force_upcast
    image = ours_i2i.image_processor.preprocess(make_image())

    def gen():
        return torch.Generator().manual_seed(3) if generators == "one" else [torch.Generator().manual_seed(s) for s in (3, 4)]

    ref = ref_pipe.prepare_latents(image, None, 1, 2, torch.float16, "cpu", gen(), add_noise=False)
    mine = prepare_img2img_latents(
        mine_vae, ours_i2i.scheduler, image, None, 2, dtype=torch.float16, device=torch.device("cpu"),
        generator=gen(), add_noise=False,
    )
    assert mine.dtype == ref.dtype == torch.float16
    assert mine_vae.dtype == torch.float16
    torch.testing.assert_close(mine, ref, atol=2e-3, rtol=0)
