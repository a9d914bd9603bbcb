"""StableDiffusionXLPipeline: text-to-image with diffusers 0.42's arguments, defaults and outputs."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdxl.image import VaeImageProcessor, check_output_type, postprocess
from sdxl.models.lora import check_cross_attention_kwargs
from sdxl.pipelines.base import DiffusionPipeline, PipelineOutput
from sdxl.pipelines.call_state import CallStateMixin
from sdxl.pipelines.denoise import (
    CALLBACK_TENSOR_INPUTS,
    check_callback_tensor_inputs,
    check_denoising_fraction,
    decode_latents,
    denoise,
    guidance_per_image,
    is_positive_int,
    prepare_latents,
    retrieve_timesteps,
    scheduler_step_kwargs,
    steps_before_denoising_end,
)
from sdxl.pipelines.fast import FastPathMixin
from sdxl.pipelines.ip_adapter import IPAdapterMixin
from sdxl.pipelines.lora import LoraLoaderMixin, with_prompt_loras
from sdxl.pipelines.sd_mixin import StableDiffusionMixin
from sdxl.pipelines.textual_inversion import TextualInversionLoaderMixin
from sdxl.pipelines.unet_inputs import UNetInputsMixin
from sdxl.prompts.encode import check_prompt_inputs, encode_prompt, prompt_batch_size
from sdxl.prompts.micro import base_time_ids, time_ids_tensor
from sdxl.prompts.weighting import parser_for
from sdxl.watermark import StableDiffusionXLWatermarker, is_watermark_available

logger = logging.getLogger(__name__)


# diffusers' img2img and inpaint pipelines list the scheduler after the IP-Adapter parts (text2img before them)
IMAGE_MODE_COMPONENTS = (
    "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "image_encoder", "feature_extractor",
    "scheduler",
)


@dataclass
class StableDiffusionXLPipelineOutput(PipelineOutput):
    """`images`: list of PIL images, (B, H, W, 3) float32 array, or tensor, per `output_type`."""


class StableDiffusionXLPipeline(
    LoraLoaderMixin, DiffusionPipeline, StableDiffusionMixin, IPAdapterMixin, UNetInputsMixin, FastPathMixin,
    TextualInversionLoaderMixin, CallStateMixin,
):
    """Stable Diffusion XL text-to-image.

    Components: `vae`, `text_encoder` (CLIP ViT-L), `text_encoder_2` (OpenCLIP ViT-bigG with projection), their
    `tokenizer` / `tokenizer_2`, `unet` and `scheduler`; optional `image_encoder` (CLIPVisionModelWithProjection) and
    `feature_extractor` (CLIPImageProcessor) for IP-Adapter images. The text encoders and tokenizers may be None when
    only `prompt_embeds` are passed; a pipeline of only text encoders and tokenizers can `encode_prompt`.

    `force_zeros_for_empty_prompt` (model_index.json; default True): with no negative prompt, the negative
    conditioning is zeros rather than the encoded "". `add_watermarker` (default: whether the optional
    `invisible-watermark` package is installed) marks every decoded image with SDXL's 48-bit watermark.
    """

    _component_names = (
        "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler", "image_encoder",
        "feature_extractor",
    )
    _required_components = ("vae", "unet", "scheduler")
    _optional_components = (
        "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder", "feature_extractor",
    )
    _init_options = ("force_zeros_for_empty_prompt", "add_watermarker")
    _callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        self.register_components(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        # As diffusers: on by default when invisible-watermark is installed; True without it is an ImportError
        # (at the first image) that says what to install.
        if add_watermarker is None:
            add_watermarker = is_watermark_available()
        self.watermark = StableDiffusionXLWatermarker() if add_watermarker else None
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.default_sample_size = getattr(unet.config, "sample_size", 128) if unet is not None else 128
        # the call's state, exposed by CallStateMixin's properties (guidance_scale, interrupt, ...)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = 5.0, 0.0, None
        self._denoising_end, self._num_timesteps, self._interrupt = None, 0, False
        self._cross_attention_kwargs = None

    # ---- building blocks --------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
        prompt_syntax: str | None = None,
        long_prompts: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), as
        diffusers' method of the same name (see `sdxl.prompts.encode.encode_prompt`); `prompt_syntax` and
        `long_prompts` as in `__call__`."""
        with self.lora_call_scale(lora_scale, ("text_encoder", "text_encoder_2")):
            return encode_prompt(
                tokenizer=self.tokenizer, text_encoder=self.text_encoder,
                tokenizer_2=self.tokenizer_2, text_encoder_2=self.text_encoder_2,
                prompt=prompt, prompt_2=prompt_2, device=device or self.device,
                num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=do_classifier_free_guidance,
                negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                clip_skip=clip_skip, force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
                dtype=self.unet.dtype if self.unet is not None else None, prompt_syntax=prompt_syntax,
                long_prompts=long_prompts,
            )

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial latents (diffusers' method signature); see `sdxl.pipelines.denoise.prepare_latents`."""
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return prepare_latents(
            self.scheduler, shape, dtype=dtype, device=device, generator=generator, latents=latents
        )

    def _time_ids(
        self, original_size: Any, crops_coords_top_left: Any, target_size: Any, dtype: torch.dtype, projection_dim: int
    ) -> torch.Tensor:
        """(1, 6) base-layout micro-conditioning ids, checked against the UNet's added-embedding width."""
        ids = base_time_ids(original_size, crops_coords_top_left, target_size)
        return time_ids_tensor(ids, unet_config=self.unet.config, projection_dim=projection_dim, dtype=dtype)

    def check_inputs(
        self,
        height: int,
        width: int,
        num_images_per_prompt: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        denoising_end: float | None,
        prompt_syntax: str | None = None,
        long_prompts: bool = False,
        **prompt_inputs: Any,
    ) -> None:
        """ValueError/TypeError for everything the call cannot run with, before any work is done."""
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` must be divisible by 8, but are {height} and {width}.")
        self._check_generation_inputs(
            num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, denoising_end,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts, **prompt_inputs,
        )

    def _check_generation_inputs(
        self,
        num_images_per_prompt: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        denoising_end: float | None,
        prompt_syntax: str | None = None,
        long_prompts: bool = False,
        **prompt_inputs: Any,
    ) -> None:
        """The checks every SDXL mode shares (all of `check_inputs` but the output size)."""
        parser_for(prompt_syntax)
        if not isinstance(long_prompts, bool):
            raise TypeError(f"`long_prompts` must be True or False, but got {long_prompts!r}.")
        if not is_positive_int(num_images_per_prompt):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, but got {num_images_per_prompt!r}.")
        check_output_type(output_type)
        check_callback_tensor_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        check_denoising_fraction("denoising_end", denoising_end)
        check_prompt_inputs(**prompt_inputs)
        texts = [k for k in ("prompt", "negative_prompt") if prompt_inputs.get(k) is not None]
        if texts and (self.text_encoder_2 is None or self.tokenizer_2 is None):
            raise ValueError(
                f"{texts} given, but this pipeline has no text_encoder_2/tokenizer_2 to encode text: load them, or "
                "pass prompt_embeds and pooled_prompt_embeds (and the negative ones) instead."
            )

    # ---- the call ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    @with_prompt_loras
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float | Sequence[float] = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor] | None] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        prompt_syntax: str | None = None,
        long_prompts: bool = False,
    ) -> StableDiffusionXLPipelineOutput | tuple[Any]:
        """Generate images from text; arguments, defaults and results as diffusers' `StableDiffusionXLPipeline`.

        Returns `StableDiffusionXLPipelineOutput(images=...)`, or `(images,)` with `return_dict=False`.
        With IP-Adapters loaded, `ip_adapter_image` (one image, or a list with one per adapter) or
        `ip_adapter_image_embeds` (one (2B or B, n_images, ...) tensor per adapter, [negative; positive] under
        guidance) conditions on images; `cross_attention_kwargs` goes to the UNet ({"ip_adapter_masks": [...]},
        diffusers' LoRA {"scale": s}). `denoising_end` must be a float strictly inside (0, 1) (diffusers silently
        ignores other values).
        Negative micro-conditioning applies only when both `negative_original_size` and `negative_target_size` are
        given, as in diffusers.

        Not in diffusers: `prompt_syntax` "compel" (`word+`, `(words)1.2`, `word--`) or "a1111" (`(word:1.2)`,
        `(word)`, `[word]`) weights parts of the prompts with compel's formula (None: plain text, diffusers'
        encoding); `long_prompts=True` encodes prompts past 77 tokens in 77-token windows instead of truncating them.
        `guidance_scale` may also be one scale per image (a batch of different requests: each image as if alone).
        """
        # a diffusers-style callback object carries the tensor names it wants
        callback_on_step_end_tensor_inputs = getattr(
            callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs
        )
        # 0. defaults
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)

        # 1. check inputs
        self.check_inputs(
            height, width, num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, denoising_end,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        self.check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        if not isinstance(guidance_scale, numbers.Real):  # one per image (ours): a batch of different requests
            images = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
            guidance_scale = guidance_per_image(guidance_scale, images)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._denoising_end = denoising_end
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        device = self.device

        # 2. timesteps (before encoding: a bad step count fails fast)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        if denoising_end is not None:
            num_inference_steps = steps_before_denoising_end(
                timesteps, denoising_end, self.scheduler.config.num_train_timesteps
            )
            timesteps = timesteps[:num_inference_steps]

        # 3. prompt -> (B, 77, 2048) context and (B, 1280) pooled vector, negatives first under guidance
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt, prompt_2, device, num_images_per_prompt, self.do_classifier_free_guidance,
            negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, clip_skip=clip_skip,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts,
            lora_scale=check_cross_attention_kwargs(cross_attention_kwargs),
        )

        # 4. initial noise, in the prompt dtype (the pipeline's)
        latents = self.prepare_latents(
            batch_size, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )

        # 5. micro-conditioning (1, 6) ids. As in diffusers, the negative ids are the positive ones unless both
        #    negative_original_size and negative_target_size are given (negative crops alone change nothing).
        projection_dim = self._projection_dim(pooled_prompt_embeds)
        dtype = prompt_embeds.dtype
        add_time_ids = self._time_ids(original_size, crops_coords_top_left, target_size, dtype, projection_dim)
        negative_add_time_ids = add_time_ids
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._time_ids(
                negative_original_size, negative_crops_coords_top_left, negative_target_size, dtype, projection_dim
            )
        add_text_embeds = pooled_prompt_embeds
        if self.do_classifier_free_guidance:
            # (2B, ...): rows [negatives; positives]
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)
        state = {
            "latents": latents,
            "prompt_embeds": prompt_embeds.to(device),
            "add_text_embeds": add_text_embeds.to(device),
            # (2, n) [neg; pos] repeated per image: rows interleave neg, pos, neg, pos, ... (as diffusers)
            "add_time_ids": add_time_ids.to(device).repeat(batch_size, 1),
            **self._denoiser_extras(ip_adapter_image, ip_adapter_image_embeds, batch_size, device, latents.dtype),
        }

        # 6. denoise
        self._num_timesteps = len(timesteps)
        latents = denoise(
            self, state, timesteps,
            progress_total=num_inference_steps,
            step_kwargs=scheduler_step_kwargs(self.scheduler, generator, eta),
            callback_on_step_end=callback_on_step_end,
            cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )

        # 7. decode and convert
        return self._output(latents, output_type, return_dict)

    def _projection_dim(self, pooled_prompt_embeds: torch.Tensor) -> int:
        """Width of the pooled text vector the UNet's added embedding reads."""
        if self.text_encoder_2 is not None:
            return self.text_encoder_2.config.projection_dim
        return int(pooled_prompt_embeds.shape[-1])

    def _output(
        self, latents: torch.Tensor, output_type: str, return_dict: bool
    ) -> StableDiffusionXLPipelineOutput | tuple[Any]:
        """Final latents -> the call's result: decoded, watermarked and converted unless `output_type="latent"`."""
        if output_type == "latent":
            image = latents
        else:
            image = decode_latents(self.vae, latents)
            if self.watermark is not None:
                image = self.watermark.apply_watermark(image)
            image = postprocess(image, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)
