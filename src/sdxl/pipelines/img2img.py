"""StableDiffusionXLImg2ImgPipeline: image-to-image and the SDXL refiner, with diffusers 0.42's arguments, defaults
and outputs.

The image is encoded by the VAE (or taken as latents as it is), noised to the timestep where `strength` (or
`denoising_start`) starts the schedule, and denoised by the shared loop. The refiner runs it two ways:
- ensemble of experts: the base runs `denoising_end=f, output_type="latent"`, the refiner `denoising_start=f` on
  those latents (no noise is added: they are still noisy);
- base then refiner: the refiner re-noises the base's finished image by `strength` and denoises it again.
Everything else (prompt encoding, guidance, the scheduler loop, the VAE decode) is text-to-image's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sdxl.models.lora import check_cross_attention_kwargs
from sdxl.pipelines.denoise import (
    check_denoising_fraction,
    denoise,
    retrieve_timesteps,
    scheduler_step_kwargs,
    steps_before_denoising_end,
)
from sdxl.pipelines.img2img_common import (
    check_strength,
    conditioning_state,
    img2img_timesteps,
    prepare_img2img_latents,
)
from sdxl.pipelines.lora import with_prompt_loras
from sdxl.pipelines.text2img import IMAGE_MODE_COMPONENTS, StableDiffusionXLPipeline, StableDiffusionXLPipelineOutput
from sdxl.prompts.encode import prompt_batch_size

logger = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.3


class StableDiffusionXLImg2ImgPipeline(StableDiffusionXLPipeline):
    """Stable Diffusion XL image-to-image; also the SDXL refiner's pipeline.

    Components as `StableDiffusionXLPipeline`; the refiner has no `text_encoder`/`tokenizer` (only the second
    encoder). Options (model_index.json or `from_pretrained` keywords): `requires_aesthetics_score` (True for the
    refiner: its UNet's time ids end with an aesthetic score instead of the target size), `force_zeros_for_empty_prompt`
    (False for the refiner: the negative prompt "" is encoded), `add_watermarker`.
    """

    _init_options = ("requires_aesthetics_score", "force_zeros_for_empty_prompt", "add_watermarker")
    _component_names = IMAGE_MODE_COMPONENTS

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
        self._denoising_start = None

    @property
    def denoising_start(self) -> float | None:
        return self._denoising_start

    def _is_latents(self, image: Any) -> bool:
        """A tensor (or list of tensors) with the VAE's latent channel count: taken as latents, not pixels."""
        first = image[0] if isinstance(image, list) and image else image
        if not isinstance(first, torch.Tensor):
            return False
        channels = first.shape[1] if first.ndim == 4 else first.shape[0] if first.ndim == 3 else None
        return channels == self.vae.config.latent_channels

    def check_img2img_inputs(
        self, image: Any, strength: float, denoising_start: float | None, denoising_end: float | None
    ) -> None:
        """ValueError/TypeError for the image-to-image inputs the call cannot run with, before any work is done."""
        check_strength(strength)
        check_denoising_fraction("denoising_start", denoising_start)
        if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
            raise ValueError(
                f"`denoising_start` ({denoising_start}) must be smaller than `denoising_end` ({denoising_end}): this "
                "call would run no step."
            )
        if image is None:
            raise ValueError(
                "`image` is required: pass the image to start from (PIL image, numpy array, tensor, a list of them, or "
                "latents)."
            )
        if denoising_start is not None:
            if not self._is_latents(image):
                raise ValueError(
                    f"`denoising_start={denoising_start}` continues a partly denoised run and needs the base's noisy "
                    f"latents (a tensor with {self.vae.config.latent_channels} channels), but `image` is "
                    f"{_describe(image)}. Run the base with `denoising_end={denoising_start}, output_type=\"latent\"` "
                    "and pass its `.images` here; to refine a finished image, leave `denoising_start` unset and use "
                    "`strength` instead."
                )
            if strength != DEFAULT_STRENGTH:
                logger.warning(
                    "`strength=%s` is ignored: `denoising_start=%s` sets where the schedule starts (as in diffusers).",
                    strength, denoising_start,
                )

    # ---- the call ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    @with_prompt_loras
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        image: Any = None,
        strength: float = DEFAULT_STRENGTH,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
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
        """Transform `image` guided by the prompt; arguments, defaults and results as diffusers'
        `StableDiffusionXLImg2ImgPipeline`.

        `image`: PIL image(s), numpy array(s) in [0, 1], tensors in [0, 1] or [-1, 1], or latents (a tensor with the
        VAE's latent channel count: not encoded). Pixels are used at their own size rounded down to a multiple of the
        VAE scale factor. `strength` in [0, 1]: the last floor(num_inference_steps * strength) steps run on the
        noised image. `denoising_start` (the refiner's hand-off, a float in (0, 1)) overrides `strength`, takes the
        base's latents as they are (no noise added) and runs the rest of the schedule; `denoising_end` stops early.
        `aesthetic_score`/`negative_aesthetic_score` condition a refiner (`requires_aesthetics_score`). `latents`, if
        given, are the start latents exactly (no noise added, as diffusers). Returns
        `StableDiffusionXLPipelineOutput(images=...)`, or `(images,)` with `return_dict=False`.

        Stricter than diffusers: `denoising_start` with pixels (diffusers encodes them and adds no noise) and a step
        count that `strength` cuts to zero are ValueErrors. `prompt_syntax`/`long_prompts` as in text-to-image.
        """
        callback_on_step_end_tensor_inputs = getattr(
            callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs
        )
        # 1. check inputs
        self._check_generation_inputs(
            num_images_per_prompt, output_type, callback_on_step_end_tensor_inputs, denoising_end,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        self.check_img2img_inputs(image, strength, denoising_start, denoising_end)
        self.check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._denoising_end = denoising_end
        self._denoising_start = denoising_start
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = prompt_batch_size(prompt, prompt_embeds) * num_images_per_prompt
        device = self.device

        # 2. image -> (b, 3, H, W) in [-1, 1], or (b, C, h, w) latents as they are (a bad image fails before work)
        init_image = self.image_processor.preprocess(image)

        # 3. prompt -> (B, 77, D) context and (B, P) pooled vector
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt, prompt_2, device, num_images_per_prompt, self.do_classifier_free_guidance,
            negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, clip_skip=clip_skip,
            prompt_syntax=prompt_syntax, long_prompts=long_prompts,
            lora_scale=check_cross_attention_kwargs(cross_attention_kwargs),
        )
        dtype = prompt_embeds.dtype


        # 4. timesteps: strength (or denoising_start) drops the start of the schedule, denoising_end its end
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        timesteps, num_inference_steps, begin_index = img2img_timesteps(
            self.scheduler, num_inference_steps, strength, denoising_start
        )
        if num_inference_steps < 1:
            raise ValueError(
                f"`strength={strength}` keeps no step of the {len(self.scheduler.timesteps)}-step schedule "
                "(floor(num_inference_steps * strength) = 0): raise `strength` or `num_inference_steps`."
            )
        latent_timestep = timesteps[:1].repeat(batch_size)

        # 5. start latents: the image's posterior sample(s), then the noise (skipped for the hand-off)
        if latents is None:
            latents = prepare_img2img_latents(
                self.vae, self.scheduler, init_image, latent_timestep, batch_size, dtype=dtype, device=device,
                generator=generator, add_noise=denoising_start is None,
            )
        else:
            latents = latents.to(device=device, dtype=dtype)
        if denoising_end is not None:
            num_inference_steps = steps_before_denoising_end(
                timesteps, denoising_end, self.scheduler.config.num_train_timesteps
            )
            timesteps = timesteps[:num_inference_steps]

        # 6. micro-conditioning from the latents' own size; rows [negatives x B; positives x B]
        state = conditioning_state(
            self, latents,
            (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), batch_size,
            original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
            aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
            negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left,
            negative_target_size=negative_target_size,
        )
        state.update(self._denoiser_extras(ip_adapter_image, ip_adapter_image_embeds, batch_size, device, dtype))

        # 7. denoise
        self._num_timesteps = len(timesteps)
        latents = denoise(
            self, state, timesteps,
            progress_total=num_inference_steps,
            step_kwargs=scheduler_step_kwargs(self.scheduler, generator, eta),
            callback_on_step_end=callback_on_step_end,
            cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            begin_index=begin_index,
        )

        # 8. decode and convert
        return self._output(latents, output_type, return_dict)


def _describe(image: Any) -> str:
    """A short description of an `image` argument for error messages."""
    first = image[0] if isinstance(image, list) and image else image
    what = type(first).__name__
    shape = getattr(first, "shape", None) or getattr(first, "size", None)
    prefix = f"a list of {len(image)} x " if isinstance(image, list) else "a "
    return f"{prefix}{what}" + (f" of shape/size {tuple(shape)}" if shape is not None else "")
