"""What image-to-image and inpainting share: where the schedule starts, the image's latents, the noised start,
and the refiner's aesthetic-score micro-conditioning.

Everything here reproduces diffusers 0.42's `StableDiffusionXLImg2ImgPipeline` / `...InpaintPipeline` helpers
(`get_timesteps`, `prepare_latents`, `_encode_vae_image`, `_get_add_time_ids`) step for step, including the order
in which random numbers are drawn, so that one seed gives the same image in both libraries.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from sdxl.noise import Generator, randn_tensor
from sdxl.pipelines.denoise import _cast_weights, check_generator_count
from sdxl.prompts.micro import base_time_ids, refiner_time_ids, time_ids_tensor


def check_strength(strength: Any) -> None:
    """`strength` must be a number in [0, 1]: how much of the schedule runs (1.0 ignores the image's content)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(
            f"`strength` must be a number between 0 and 1 (the fraction of the schedule to run on the noised image), "
            f"but got {strength!r}."
        )


def img2img_timesteps(
    scheduler: Any, num_inference_steps: int, strength: float, denoising_start: float | None = None
) -> tuple[torch.Tensor, int, int]:
    """Cut the start of `scheduler.timesteps` (already set for `num_inference_steps`); return
    (timesteps, number of steps, begin_index) and set the scheduler's begin index.

    Without `denoising_start`: the last floor(N * strength) steps run (begin index counted in scheduler passes:
    a 2nd-order scheduler has `order` entries per step). With `denoising_start` (which overrides `strength`): every
    timestep below round(T - denoising_start * T) runs, plus one for a 2nd-order scheduler when that count is even,
    so the run never stops between a step's two passes; this is the exact complement of the base's `denoising_end`.
    """
    order = getattr(scheduler, "order", 1)
    all_timesteps = scheduler.timesteps
    if denoising_start is None:
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        begin_index = t_start * order
        n_steps = num_inference_steps - t_start
    else:
        T = scheduler.config.num_train_timesteps
        cutoff = round(T - denoising_start * T)
        n_steps = int((all_timesteps < cutoff).sum())
        if order == 2 and n_steps % 2 == 0:
            n_steps += 1
        begin_index = len(all_timesteps) - n_steps
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)
    return all_timesteps[begin_index:], n_steps, begin_index


def retrieve_latents(encoded: Any, generator: Generator) -> torch.Tensor:
    """A sample of the posterior (`AutoencoderKL`), or the latents themselves (`AutoencoderTiny`, which has no
    posterior and draws no random numbers), as diffusers' `retrieve_latents`."""
    dist = getattr(encoded, "latent_dist", None)
    return dist.sample(generator) if dist is not None else encoded.latents


def encode_image_latents(
    vae: Any, image: torch.Tensor, generator: Generator, *, use_latents_stats: bool = False
) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f) in `image.dtype`: one posterior sample each.

    A list of generators samples image[i] with generator[i] (one per row of `image`); one generator samples the whole
    batch at once (different numbers than the list: as diffusers). A VAE whose config says `force_upcast` encodes in
    fp32 (the image is cast from its own dtype first) and gets its dtype back afterwards. `use_latents_stats`
    normalises with the config's `latents_mean`/`latents_std` where present (img2img does; inpaint does not).
    """
    dtype = image.dtype
    vae_dtype = vae.dtype
    upcast = bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        image = image.float()
        _cast_weights(vae, torch.float32)
    else:
        image = image.to(vae_dtype)
    try:
        if isinstance(generator, list):
            if len(generator) < image.shape[0]:
                raise ValueError(
                    f"A list of {len(generator)} generators was passed for {image.shape[0]} images to encode: pass one "
                    "generator per image, or a single generator."
                )
            rows = [retrieve_latents(vae.encode(image[i : i + 1]), generator[i]) for i in range(image.shape[0])]
            latents = torch.cat(rows, dim=0)
        else:
            latents = retrieve_latents(vae.encode(image), generator)
    finally:
        if upcast:
            _cast_weights(vae, vae_dtype)
    latents = latents.to(dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if use_latents_stats and mean is not None and std is not None:
        # (1, C, 1, 1) per-channel statistics
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, dtype)
        return (latents - mean) * vae.config.scaling_factor / std
    return vae.config.scaling_factor * latents


def repeat_to_batch(name: str, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(b, ...) -> (batch_size, ...) by whole copies [x, x, ...] (batch_size must be a multiple of b)."""
    b = tensor.shape[0]
    if b == batch_size:
        return tensor
    if b > batch_size or batch_size % b != 0:
        raise ValueError(
            f"Cannot use {b} `{name}` rows for an effective batch of {batch_size} images (prompts x "
            f"num_images_per_prompt): pass 1 {name}, or a number of them that divides {batch_size}."
        )
    return torch.cat([tensor] * (batch_size // b), dim=0)


def prepare_img2img_latents(
    vae: Any,
    scheduler: Any,
    image: torch.Tensor,
    timestep: torch.Tensor,
    batch_size: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: Generator,
    add_noise: bool = True,
) -> torch.Tensor:
    """Image-to-image start latents (batch_size, C, h, w), as diffusers' img2img `prepare_latents`.

    `image` is preprocessed pixels (b, 3, H, W) in [-1, 1] or latents (b, C, h, w) (C = the VAE's latent channels:
    used as they are, no VAE). Pixels are encoded with `use_latents_stats`; with a generator list the images are
    first repeated to the batch, so each row gets its own posterior sample; with one generator they are encoded once
    and the latents repeated. Then, unless `add_noise` is False (the refiner's `denoising_start` hand-off), noise is
    drawn (after the posterior samples, from the same generator(s)) and added at `timestep` (batch_size,).
    """
    image = image.to(device=device, dtype=dtype)
    if image.shape[1] == vae.config.latent_channels:
        latents = image
    else:
        check_generator_count(generator, batch_size)
        if isinstance(generator, list):
            image = repeat_to_batch("image", image, batch_size)
        latents = encode_image_latents(vae, image, generator, use_latents_stats=True)
    latents = repeat_to_batch("image", latents, batch_size)
    if not add_noise:
        return latents
    noise = randn_tensor(tuple(latents.shape), generator, device, dtype)
    return scheduler.add_noise(latents, noise, timestep)


def aesthetic_time_ids(
    unet_config: Any,
    *,
    requires_aesthetics_score: bool,
    original_size: Sequence[int],
    crops_coords_top_left: Sequence[int],
    target_size: Sequence[int],
    aesthetic_score: float,
    negative_aesthetic_score: float,
    negative_original_size: Sequence[int],
    negative_crops_coords_top_left: Sequence[int],
    negative_target_size: Sequence[int],
    dtype: torch.dtype,
    projection_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) (1, n) micro-conditioning ids of img2img/inpaint, in `dtype`.

    `requires_aesthetics_score` (the refiner): [orig_h, orig_w, top, left, score], 5 ids, the negative with the
    negative size, crops and score. Otherwise the base layout [orig, crop, target], 6 ids, whose negative uses the
    positive `crops_coords_top_left` (diffusers ignores `negative_crops_coords_top_left` there). A layout that does
    not fit the UNet's added embedding is a ValueError saying which setting to flip.
    """
    if requires_aesthetics_score:
        positive = refiner_time_ids(original_size, crops_coords_top_left, aesthetic_score)
        negative = refiner_time_ids(negative_original_size, negative_crops_coords_top_left, negative_aesthetic_score)
    else:
        positive = base_time_ids(original_size, crops_coords_top_left, target_size)
        negative = base_time_ids(negative_original_size, crops_coords_top_left, negative_target_size)
    _check_layout(unet_config, len(positive), projection_dim, requires_aesthetics_score)
    kwargs = {"unet_config": unet_config, "projection_dim": projection_dim, "dtype": dtype}
    return time_ids_tensor(positive, **kwargs), time_ids_tensor(negative, **kwargs)


def _check_layout(unet_config: Any, n_ids: int, projection_dim: int, requires_aesthetics_score: bool) -> None:
    """A ValueError saying which way to set `requires_aesthetics_score` when the other layout fits the UNet.

    (diffusers raises here too, but its hint names the setting the pipeline already has.) Any other width mismatch
    is left to `time_ids_tensor`'s message.
    """
    per_id = unet_config.addition_time_embed_dim
    expected = unet_config.projection_class_embeddings_input_dim
    if per_id * n_ids + projection_dim == expected:
        return
    other = n_ids + 1 if requires_aesthetics_score else n_ids - 1
    if per_id * other + projection_dim != expected:
        return
    want = not requires_aesthetics_score
    layouts = {
        True: "the refiner layout: original size, crop top-left, aesthetic score (5 ids)",
        False: "the base layout: original size, crop top-left, target size (6 ids)",
    }
    raise ValueError(
        f"This UNet was trained with {layouts[want]} (unet.config.projection_class_embeddings_input_dim = {expected}), "
        f"but the pipeline has requires_aesthetics_score={requires_aesthetics_score}, which gives {layouts[not want]}. "
        f"Load it with `from_pretrained(..., requires_aesthetics_score={want})` or call "
        f"`pipe.register_to_config(requires_aesthetics_score={want})`."
    )


def conditioning_state(
    pipe: Any,
    latents: torch.Tensor,
    embeds: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None],
    batch_size: int,
    *,
    original_size: tuple[int, int] | None,
    crops_coords_top_left: tuple[int, int],
    target_size: tuple[int, int] | None,
    aesthetic_score: float,
    negative_aesthetic_score: float,
    negative_original_size: tuple[int, int] | None,
    negative_crops_coords_top_left: tuple[int, int],
    negative_target_size: tuple[int, int] | None,
) -> dict[str, torch.Tensor]:
    """The loop state of an img2img or inpainting call: latents, text context, pooled vector and time ids.

    `embeds` is `encode_prompt`'s (prompt, negative, pooled, negative pooled). Sizes default to the latents' own
    size (as diffusers); the time ids follow the pipeline's `requires_aesthetics_score` layout. Under guidance the
    rows are stacked [negatives x B; positives x B].
    """
    prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = embeds
    device = latents.device
    height, width = (s * pipe.vae_scale_factor for s in latents.shape[-2:])
    original_size = original_size or (height, width)
    target_size = target_size or (height, width)
    add_time_ids, add_neg_time_ids = aesthetic_time_ids(
        pipe.unet.config,
        requires_aesthetics_score=pipe.config.requires_aesthetics_score,
        original_size=original_size,
        crops_coords_top_left=crops_coords_top_left,
        target_size=target_size,
        aesthetic_score=aesthetic_score,
        negative_aesthetic_score=negative_aesthetic_score,
        negative_original_size=negative_original_size or original_size,
        negative_crops_coords_top_left=negative_crops_coords_top_left,
        negative_target_size=negative_target_size or target_size,
        dtype=prompt_embeds.dtype,
        projection_dim=pipe._projection_dim(pooled_prompt_embeds),
    )
    add_time_ids = add_time_ids.repeat(batch_size, 1)
    add_text_embeds = pooled_prompt_embeds
    if pipe.do_classifier_free_guidance:
        prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
        add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
        add_time_ids = torch.cat([add_neg_time_ids.repeat(batch_size, 1), add_time_ids], dim=0)
    return {
        "latents": latents,
        "prompt_embeds": prompt_embeds.to(device),
        "add_text_embeds": add_text_embeds.to(device),
        "add_time_ids": add_time_ids.to(device),
    }
