"""The inpainting pipeline's building blocks: input checks, the initial latents, the mask at latent size, and the
4-channel blend after each step (diffusers 0.42's `check_inputs`, `prepare_latents`, `prepare_mask_latents` and
the loop's blending, with the same order of random draws)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from sdxl.image import mask_latents, spatial_size
from sdxl.noise import randn_tensor
from sdxl.pipelines.denoise import check_denoising_fraction, check_generator_count
from sdxl.pipelines.img2img_common import check_strength, encode_image_latents, repeat_to_batch

logger = logging.getLogger(__name__)


class InpaintStepsMixin:
    """Methods of `StableDiffusionXLInpaintPipeline` that prepare its inputs (they read the pipeline's vae, unet,
    scheduler and guidance settings)."""

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
