"""Bad input to StableDiffusionXLPipeline.__call__ fails before any work with a ValueError/TypeError that names it."""

from __future__ import annotations

import pytest
import torch
from pipeline_parity import SIZE, call


@pytest.fixture(scope="module")
def embeds(theirs):
    """(prompt_embeds, negative, pooled, negative_pooled) for one prompt, from diffusers' encode_prompt."""
    return theirs.encode_prompt("a cat", device="cpu", negative_prompt="dark")


@pytest.mark.parametrize(("height", "width"), [(60, 64), (64, 100)])
def test_size_not_divisible_by_8(ours, height, width):
    with pytest.raises(ValueError, match=f"divisible by 8, but are {height} and {width}"):
        call(ours, height=height, width=width)


@pytest.mark.parametrize("value", [1.0, 0.0, 1.5, -0.2, 1])
def test_denoising_end_out_of_range(ours, value):
    with pytest.raises(ValueError, match=rf"`denoising_end` must lie strictly between 0 and 1.*{value}"):
        call(ours, denoising_end=value)


@pytest.mark.parametrize("value", ["0.8", True])
def test_denoising_end_not_a_number(ours, value):
    with pytest.raises(TypeError, match="`denoising_end` must be a float"):
        call(ours, denoising_end=value)


def test_prompt_and_prompt_embeds(ours, embeds):
    with pytest.raises(ValueError, match="either `prompt` or `prompt_embeds`"):
        call(ours, prompt="a cat", prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[2])


def test_prompt_2_and_prompt_embeds(ours, embeds):
    with pytest.raises(ValueError, match="either `prompt_2` or `prompt_embeds`"):
        call(ours, prompt=None, prompt_2="a dog", prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[2])


def test_no_prompt_at_all(ours):
    with pytest.raises(ValueError, match="Pass `prompt`.*or `prompt_embeds`; both are missing"):
        call(ours, prompt=None)


@pytest.mark.parametrize("prompt", [42, [], ["a cat", 3]])
def test_prompt_of_wrong_type(ours, prompt):
    with pytest.raises(ValueError, match="`prompt` must be a string or a non-empty list of strings"):
        call(ours, prompt=prompt)


def test_embeds_without_pooled(ours, embeds):
    with pytest.raises(ValueError, match="without `pooled_prompt_embeds`"):
        call(ours, prompt=None, prompt_embeds=embeds[0])


def test_negative_embeds_without_negative_pooled(ours, embeds):
    with pytest.raises(ValueError, match="without `negative_pooled_prompt_embeds`"):
        call(
            ours, prompt=None, prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[2],
            negative_prompt_embeds=embeds[1],
        )


def test_embeds_shape_mismatch(ours, embeds):
    with pytest.raises(ValueError, match=r"same shape, but got \(1, 77, 64\) and \(1, 76, 64\)"):
        call(
            ours, prompt=None, prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[2],
            negative_prompt_embeds=embeds[1][:, :76], negative_pooled_prompt_embeds=embeds[3],
        )


def test_pooled_batch_mismatch(ours, embeds):
    with pytest.raises(ValueError, match="`pooled_prompt_embeds` has batch 2 but `prompt_embeds` has batch 1"):
        call(ours, prompt=None, prompt_embeds=embeds[0], pooled_prompt_embeds=embeds[2].repeat(2, 1))


def test_negative_prompt_and_negative_embeds(ours, embeds):
    with pytest.raises(ValueError, match="either `negative_prompt` or `negative_prompt_embeds`"):
        call(ours, negative_prompt="dark", negative_prompt_embeds=embeds[1], negative_pooled_prompt_embeds=embeds[3])


def test_negative_prompt_2_and_negative_embeds(ours, embeds):
    with pytest.raises(ValueError, match="either `negative_prompt_2` or `negative_prompt_embeds`"):
        call(
            ours, negative_prompt_2="dark", negative_prompt_embeds=embeds[1],
            negative_pooled_prompt_embeds=embeds[3],
        )


@pytest.mark.parametrize("name", ["negative_prompt", "negative_prompt_2", "prompt_2"])
def test_list_length_differs_from_prompts(ours, name):
    with pytest.raises(ValueError, match=f"`{name}` has 3 entries but the batch has 2 prompts"):
        call(ours, prompt=["a cat", "a dog"], **{name: ["x", "y", "z"]})


def test_negative_prompt_of_wrong_type(ours):
    with pytest.raises(TypeError, match="`negative_prompt` must be a string or a non-empty list of strings"):
        call(ours, negative_prompt=("dark",))


def test_generator_list_length(ours):
    with pytest.raises(ValueError, match="list of 3 generators was passed for an effective batch of 2"):
        call(ours, prompt="a cat", num_images_per_prompt=2, generator=[torch.Generator() for _ in range(3)])


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_num_inference_steps(ours, steps):
    with pytest.raises(ValueError, match=f"`num_inference_steps` must be a positive integer, but got {steps}"):
        call(ours, num_inference_steps=steps)


def test_num_images_per_prompt(ours):
    with pytest.raises(ValueError, match="`num_images_per_prompt` must be a positive integer, but got 0"):
        call(ours, num_images_per_prompt=0)


def test_unknown_output_type(ours):
    with pytest.raises(ValueError, match="`output_type` must be one of .* but got 'numpy'"):
        call(ours, output_type="numpy")


def test_callback_tensor_inputs_not_allowed(ours):
    with pytest.raises(ValueError, match=r"may only name .* but also got \['noise_pred'\]"):
        call(ours, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents", "noise_pred"])


def test_latents_of_wrong_shape(ours):
    latents = torch.randn(1, 4, SIZE // 4, SIZE // 4)
    with pytest.raises(ValueError, match=r"`latents` have shape \(1, 4, 16, 16\), but this call needs \(1, 4, 32, 32\)"):
        call(ours, latents=latents)


def test_timesteps_and_sigmas(ours):
    with pytest.raises(ValueError, match="Only one of `timesteps` or `sigmas` can be passed"):
        call(ours, timesteps=[999, 500], sigmas=[14.6, 1.0])


def test_micro_conditioning_not_a_pair(ours):
    with pytest.raises(ValueError, match=r"`original_size` must be a pair .* got \(64, 64, 3\)"):
        call(ours, original_size=(64, 64, 3))


def test_cross_attention_kwargs_other_than_scale_and_ip_masks_are_refused(ours):
    with pytest.raises(TypeError, match=r"cross_attention_kwargs keys \['gligen'\]"):
        call(ours, cross_attention_kwargs={"gligen": None, "ip_adapter_masks": None})


def test_unknown_argument(ours):
    with pytest.raises(TypeError, match="controlnet_conditioning_scale"):  # a ControlNet pipeline's argument
        call(ours, controlnet_conditioning_scale=0.5)


def test_text_without_text_encoders(ours):
    bare = type(ours)(**{**ours.components, "text_encoder_2": None, "tokenizer_2": None})
    with pytest.raises(ValueError, match=r"\['prompt'\] given, but this pipeline has no text_encoder_2/tokenizer_2"):
        call(bare)
