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

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sdxl.image import VaeImageProcessor, mask_latents, masked_image, spatial_size
from sdxl.noise import randn_tensor
from sdxl.pipelines.denoise import (
    check_denoising_fraction,
    check_generator_count,
    decode_latents,
    denoise,
    retrieve_timesteps,
    scheduler_step_kwargs,
    steps_before_denoising_end,
)
from sdxl.pipelines.img2img_common import (
    check_strength,
    conditioning_state,
    encode_image_latents,
    img2img_timesteps,
    repeat_to_batch,
)
from sdxl.pipelines.text2img import IMAGE_MODE_COMPONENTS, StableDiffusionXLPipeline, StableDiffusionXLPipelineOutput
from sdxl.prompts.encode import prompt_batch_size

logger = logging.getLogger(__name__)

# Tensors a step-end callback may read and replace (diffusers' `_callback_tensor_inputs` for SDXL inpainting).
INPAINT_CALLBACK_TENSOR_INPUTS = (
    "latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask", "masked_image_latents",
)


class StableDiffusionXLInpaintPipeline(StableDiffusionXLPipeline):
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

    # ---- checks -----------------------------------------------------------------------------------------------------

    def check_inpaint_inputs(
        self,
        image: Any,
        mask_image: Any,
        masked_image_latents: torch.Tensor | None,
        strength: float,
        padding_mask_crop: int | None,
        output_type: str,
        denoising_start: float | None,
        denoising_end: float | None,
    ) -> None:
        """ValueError/TypeError for inpainting inputs the call cannot run with, before any work is done."""
        from PIL import Image

        check_strength(strength)
        check_denoising_fraction("denoising_start", denoising_start)
        if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
            raise ValueError(
                f"`denoising_start` ({denoising_start}) must be smaller than `denoising_end` ({denoising_end}): this "
                "call would run no step."
            )
        if image is None:
            raise ValueError("`image` is required: pass the image to inpaint (PIL, numpy, tensor, or latents).")
        if mask_image is None:
            raise ValueError(
                "`mask_image` is required: pass a mask of the image's size, white (1) where the image is repainted and "
                "black (0) where it is kept."
            )
        in_channels = self.unet.config.in_channels
        if in_channels not in (4, 9):
            raise ValueError(
                f"The UNet has {in_channels} input channels; inpainting needs a 4-channel UNet (base or refiner: latent "
                "blending) or a 9-channel inpainting UNet (latents + mask + masked-image latents)."
            )
        if masked_image_latents is not None:
            if in_channels == 4:  # diffusers accepts them too (and so does code written for it): say they do nothing
                logger.warning(
                    "`masked_image_latents` has no effect with a 4-channel UNet (it blends latents outside the mask); "
                    "only 9-channel inpainting UNets read it."
                )
            if not isinstance(masked_image_latents, torch.Tensor) or masked_image_latents.ndim != 4:
                raise TypeError(
                    "`masked_image_latents` must be a (B, C, h, w) tensor of VAE latents, but got "
                    f"{getattr(masked_image_latents, 'shape', type(masked_image_latents).__name__)}."
                )
        first = image[0] if isinstance(image, list) and image else image
        if isinstance(first, Image.Image) and first.mode != "RGB":
            raise ValueError(
                f"`image` is a PIL image in mode {first.mode!r}; pass an RGB image (image.convert('RGB')): a "
                "4-channel image would be taken for latents."
            )
        image_size = spatial_size(image, latent_channels=self.vae.config.latent_channels)
        mask_size = spatial_size(mask_image, mask=True)
        if image_size is not None and mask_size != image_size:
            raise ValueError(
                f"`mask_image` is {mask_size[0]}x{mask_size[1]} (height x width) but `image` is "
                f"{image_size[0]}x{image_size[1]}: pass a mask of the image's size."
            )
        if padding_mask_crop is not None:
            if not isinstance(image, Image.Image) or not isinstance(mask_image, Image.Image):
                raise ValueError(
                    "`padding_mask_crop` crops the image and the mask, so both must be PIL images, but got "
                    f"image: {type(image).__name__}, mask_image: {type(mask_image).__name__}."
                )
            if output_type != "pil":
                raise ValueError(
                    f"`padding_mask_crop` pastes the result back into the PIL image, so `output_type` must be 'pil', "
                    f"but got {output_type!r}."
                )
            if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
                raise ValueError(f"`padding_mask_crop` must be a number of pixels >= 0, but got {padding_mask_crop!r}.")

    # ---- building blocks --------------------------------------------------------------------------------------------

    def _initial_latents(
        self,
        init_image: torch.Tensor,
        image_is_latents: bool,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any,
        latents: torch.Tensor | None,
        latent_timestep: torch.Tensor,
        strength: float,
        *,
        add_noise: bool,
        nine_channels: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latents, noise, image_latents), as diffusers' inpaint `prepare_latents`.

        strength 1.0 starts from pure noise; below it from the image latents noised to the first timestep;
        with `denoising_start` (add_noise=False) from the image latents as they are (a base's latent output). The
        image latents are needed (and encoded, drawing from the generator) for the 4-channel blend, for noising
        and for the hand-off; `latents` given by the user are always pure noise (scaled by init_noise_sigma).
        """
        shape = (batch_size, self.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        check_generator_count(generator, batch_size)
        is_strength_max = strength == 1.0
        image_latents = None
        if image_is_latents:
            if tuple(init_image.shape[-2:]) != shape[-2:]:
                raise ValueError(
                    f"`image` holds latents of {tuple(init_image.shape[-2:])} (h x w), which decode to "
                    f"{init_image.shape[-2] * self.vae_scale_factor}x{init_image.shape[-1] * self.vae_scale_factor} "
                    f"pixels, but this call is for {height}x{width}: pass the latents' size as height and width."
                )
            image_latents = repeat_to_batch("image", init_image.to(device=device, dtype=dtype), batch_size)
        elif not nine_channels or not add_noise or (latents is None and not is_strength_max):
            encoded = encode_image_latents(self.vae, init_image.to(device=device, dtype=dtype), generator)
            image_latents = repeat_to_batch("image", encoded, batch_size)

        if not add_noise:
            noise = randn_tensor(shape, generator, device, dtype)
            return image_latents.to(device), noise, image_latents
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"`latents` have shape {tuple(latents.shape)}, but this call needs {shape} (batch x latent "
                    "channels x height / vae_scale_factor x width / vae_scale_factor)."
                )
            noise = latents.to(device)
            return noise * self.scheduler.init_noise_sigma, noise, image_latents
        noise = randn_tensor(shape, generator, device, dtype)
        if is_strength_max:
            return noise * self.scheduler.init_noise_sigma, noise, image_latents
        return self.scheduler.add_noise(image_latents, noise, latent_timestep), noise, image_latents

    def _encode_vae_image(self, image: torch.Tensor, generator: Any) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents, one posterior sample each (diffusers' method, which user
        code calls to make `masked_image_latents`)."""
        return encode_image_latents(self.vae, image, generator)

    def _mask_inputs(
        self,
        mask: torch.Tensor,
        masked: torch.Tensor | None,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask (B, 1, h, w) at latent size (nearest) and the masked image's latents (B, 4, h, w): given latents
        as they are, pixels through the VAE (a second posterior sample, even for 4-channel UNets, as diffusers)."""
        f = self.vae_scale_factor
        mask = mask_latents(mask, height // f, width // f).to(device=device, dtype=dtype)
        mask = repeat_to_batch("mask", mask, batch_size)
        if masked is None:
            return mask, None
        if masked.shape[1] == self.vae.config.latent_channels:
            latents = masked
        else:
            latents = encode_image_latents(self.vae, masked.to(device=device, dtype=dtype), generator)
        latents = repeat_to_batch("masked image", latents, batch_size)
        return mask, latents.to(device=device, dtype=dtype)

    def _check_nine_channels(self, mask: torch.Tensor, masked_latents: torch.Tensor | None) -> None:
        """The 9-channel UNet's input is latents + mask + masked-image latents: the channels must add up."""
        if masked_latents is None:
            raise ValueError(
                "A 9-channel inpainting UNet needs the masked image, but `image` holds latents, which cannot be "
                "masked: pass the image as pixels, or pass `masked_image_latents`."
            )
        n_latents, n_mask, n_masked = self.vae.config.latent_channels, mask.shape[1], masked_latents.shape[1]
        if n_latents + n_mask + n_masked != self.unet.config.in_channels:
            raise ValueError(
                f"The UNet takes {self.unet.config.in_channels} input channels, but latents ({n_latents}) + mask "
                f"({n_mask}) + masked-image latents ({n_masked}) = {n_latents + n_mask + n_masked}: pass a one-channel "
                "mask and masked_image_latents with the VAE's latent channels, or a UNet made for this layout."
            )

    def _blend_hook(
        self, timesteps: torch.Tensor, image_latents: torch.Tensor, noise: torch.Tensor
    ) -> Callable[[int, torch.Tensor, torch.Tensor, dict], torch.Tensor]:
        """After step i: outside the mask, the original latents noised to timesteps[i + 1] (clean after the last
        step); inside it, the sampler's latents."""
        last = len(timesteps) - 1

        def blend(i: int, t: torch.Tensor, latents: torch.Tensor, state: dict) -> torch.Tensor:
            mask = state["mask"]
            if self.do_classifier_free_guidance:
                mask = mask.chunk(2)[0]  # (B, 1, h, w): the rows were doubled for [uncond; cond]
            kept = image_latents
            if i < last:
                kept = self.scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            return (1 - mask) * kept + mask * latents

        return blend

    # ---- the call ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
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

