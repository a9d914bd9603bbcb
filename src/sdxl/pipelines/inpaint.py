"""StableDiffusionXLInpaintPipeline: repaint the masked part of an image, with diffusers 0.42's arguments,
defaults and outputs.

Two kinds of UNet, told apart by `unet.config.in_channels`:
- 4 channels (the SDXL base or refiner): after every step the latents outside the mask are replaced by the
  original image's latents re-noised to the next timestep (`after_step_hook` of the shared loop).
- 9 channels (an inpainting UNet): the UNet sees [latents, mask, masked-image latents] stacked on the channels
  (`model_input_hook`), and the latents are not blended.
Everything else (prompt encoding, guidance, the scheduler loop, the VAE decode) is text-to-image's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sdxl.image import VaeImageProcessor, masked_image
from sdxl.models.lora import check_cross_attention_kwargs
from sdxl.pipelines.denoise import (
    decode_latents,
    denoise,
    retrieve_timesteps,
    scheduler_step_kwargs,
    steps_before_denoising_end,
)
from sdxl.pipelines.img2img_common import (
    conditioning_state,
    img2img_timesteps,
)
from sdxl.pipelines.inpaint_steps import InpaintStepsMixin
from sdxl.pipelines.lora import with_prompt_loras
from sdxl.pipelines.text2img import IMAGE_MODE_COMPONENTS, StableDiffusionXLPipeline, StableDiffusionXLPipelineOutput
from sdxl.prompts.encode import prompt_batch_size

# Tensors a step-end callback may read and replace (diffusers' `_callback_tensor_inputs` for SDXL inpainting).
INPAINT_CALLBACK_TENSOR_INPUTS = (
    "latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask", "masked_image_latents", "denoised",
)


class StableDiffusionXLInpaintPipeline(InpaintStepsMixin, StableDiffusionXLPipeline):
    """Stable Diffusion XL inpainting, with a 4-channel (base/refiner) or a 9-channel (inpainting) UNet.

    Components as `StableDiffusionXLPipeline`. Options: `requires_aesthetics_score` (model_index.json; True for the
    refiner: its time ids end with an aesthetic score instead of the target size), `force_zeros_for_empty_prompt`,
    `add_watermarker`. `pipe.mask_processor` prepares masks as diffusers' does (LANCZOS resize, grayscale,
    binarised at 0.5; `pipe.mask_processor.blur(mask, blur_factor)` softens a PIL mask first).
    """

    _init_options = ("requires_aesthetics_score", "force_zeros_for_empty_prompt", "add_watermarker")
    _component_names = IMAGE_MODE_COMPONENTS
    _callback_tensor_inputs = INPAINT_CALLBACK_TENSOR_INPUTS

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
        requires_aesthetics_score: bool = False,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
            feature_extractor, force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_to_config(requires_aesthetics_score=requires_aesthetics_score)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )
        self._denoising_start = None

    @property
    def denoising_start(self) -> float | None:
        return self._denoising_start

    # ---- the call ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    @with_prompt_loras
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
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
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor] | None] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        prompt_syntax: str | None = None,
        long_prompts: bool = False,
    ) -> StableDiffusionXLPipelineOutput | tuple[Any]:
        """Inpaint `image` where `mask_image` is white; arguments, defaults and results as diffusers'
        `StableDiffusionXLInpaintPipeline`.

        `image`: PIL image, numpy array, tensor (or a list), or 4-channel latents (a base's `output_type="latent"`
        result: the refiner hand-off with `denoising_start`). `mask_image`: same forms, of the image's size, white
        = repaint. `strength` (default 0.9999, i.e. image plus noise at the second timestep; 1.0 starts from pure
        noise) sets how much of the schedule runs; `denoising_start`/`denoising_end` (floats in (0, 1)) hand off
        between a base and a refiner instead. `padding_mask_crop=p` inpaints only the box around the mask grown by
        p pixels, at full resolution, and pastes it back (PIL in and out). `masked_image_latents` replaces the VAE
        encoding of the masked image (9-channel UNets only). The height and width default to the UNet's sample
        size times the VAE factor (1024 for SDXL), not to the image's size, as in diffusers.
        `prompt_syntax`/`long_prompts` as in `StableDiffusionXLPipeline`.
        """
        callback_on_step_end_tensor_inputs = getattr(
            callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs
        )
        # 0. defaults: the UNet's size, not the image's
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor

        # 1. check inputs
        self.check_inputs(
            height, width, num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, denoising_end,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        self.check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        self.check_inpaint_inputs(
            image, mask_image, masked_image_latents, strength, padding_mask_crop, output_type, denoising_start,
            denoising_end,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._denoising_end = denoising_end
        self._denoising_start = denoising_start
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        device = self.device
        nine_channels = self.unet.config.in_channels == 9

        # 2. timesteps: strength (or denoising_start) drops the start of the schedule, denoising_end its end
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        timesteps, num_inference_steps, begin_index = img2img_timesteps(
            self.scheduler, num_inference_steps, strength, denoising_start
        )
        if num_inference_steps < 1:
            raise ValueError(
                f"strength {strength} keeps {num_inference_steps} of the steps: raise `strength` or "
                "`num_inference_steps` so that at least one step runs."
            )
        latent_timestep = timesteps[:1].repeat(batch_size)
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
        dtype = prompt_embeds.dtype

        # 4. image (B, 3, H, W) in [-1, 1] (or latents) and mask (B, 1, H, W) in {0, 1}; with padding_mask_crop both
        #    are first cut to the box around the mask
        crops_coords, resize_mode = None, "default"
        original_image = image
        if padding_mask_crop is not None:
            crops_coords = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        init_image = self.image_processor.preprocess(
            image, height, width, crops_coords=crops_coords, resize_mode=resize_mode
        ).to(dtype=torch.float32)
        mask = self.mask_processor.preprocess(
            mask_image, height, width, resize_mode=resize_mode, crops_coords=crops_coords
        )
        image_is_latents = init_image.shape[1] == self.vae.config.latent_channels
        if masked_image_latents is not None:
            masked = masked_image_latents
        else:
            masked = None if image_is_latents else masked_image(init_image, mask)

        # 5. initial latents. RNG order as diffusers: the image's VAE posterior sample, then the noise, then the
        #    masked image's posterior sample.
        latents, noise, image_latents = self._initial_latents(
            init_image, image_is_latents, batch_size, height, width, dtype, device, generator, latents,
            latent_timestep, strength, add_noise=denoising_start is None, nine_channels=nine_channels,
        )
        mask, masked_latents = self._mask_inputs(mask, masked, batch_size, height, width, dtype, device, generator)
        if nine_channels:
            self._check_nine_channels(mask, masked_latents)
        elif mask.shape[1] != 1:
            raise ValueError(
                f"The mask has {mask.shape[1]} channels after preprocessing; it needs 1: pass a grayscale mask "
                "(PIL image, (H, W) / (B, H, W) array or (B, 1, H, W) tensor)."
            )

        # 6. micro-conditioning from the latents' own size; the mask and masked-image latents are doubled under
        #    guidance like the text rows
        state = conditioning_state(
            self, latents,
            (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), batch_size,
            original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
            aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
            negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left,
            negative_target_size=negative_target_size,
        )
        if self.do_classifier_free_guidance:
            mask = torch.cat([mask] * 2)
            masked_latents = torch.cat([masked_latents] * 2) if masked_latents is not None else None
        state.update(mask=mask, masked_image_latents=masked_latents)
        state.update(self._denoiser_extras(ip_adapter_image, ip_adapter_image_embeds, batch_size, device, dtype))

        # 7. denoise: 9 channels stack [latents, mask, masked-image latents]; 4 channels blend after each step
        model_input_hook = after_step_hook = None
        if nine_channels:
            def model_input_hook(model_input: torch.Tensor, state: dict) -> torch.Tensor:
                # (2B, 4 + 1 + 4, h, w) under guidance
                return torch.cat([model_input, state["mask"], state["masked_image_latents"]], dim=1)
        else:
            after_step_hook = self._blend_hook(timesteps, image_latents, noise)
        self._num_timesteps = len(timesteps)
        latents = denoise(
            self, state, timesteps,
            progress_total=num_inference_steps,
            step_kwargs=scheduler_step_kwargs(self.scheduler, generator, eta),
            callback_on_step_end=callback_on_step_end,
            cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            model_input_hook=model_input_hook,
            after_step_hook=after_step_hook,
            begin_index=begin_index,
        )

        # 8. decode, convert, paste the crop back
        if output_type == "latent":
            image = latents
        else:
            image = decode_latents(self.vae, latents)
            if self.watermark is not None:
                image = self.watermark.apply_watermark(image)
            image = self.image_processor.postprocess(image, output_type)
            if padding_mask_crop is not None:
                image = [self.image_processor.apply_overlay(mask_image, original_image, i, crops_coords) for i in image]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

