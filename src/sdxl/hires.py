"""AUTOMATIC1111's hires fix, the pieces the runner chains: target size, the upscale (latents or decoded images),
and the second pass's step count as A1111 counts it. Also A1111's variation-seed noise (a slerp of two noises).

With a refiner, `GenerationParams.hires_refiner_pass` (A1111's option `hires_fix_refiner_pass`) says which pass it
takes over at `refiner_switch_at`: "first pass", "second pass" (the default) or "both passes"; each pass starts on
the base (A1111 reloads the base model before the hires pass).

The second pass is image-to-image on the upscaled result: A1111 runs exactly `hires_steps` steps (its "fix steps"
rule, `setup_img2img_steps`) of a schedule of int(hires_steps / min(strength, 0.999)) steps, starting where
that schedule's noise level matches the denoising strength.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sdxl.params import GenerationParams, Upscaler, check_hires_refiner_pass, find_schedule, find_upscaler

if TYPE_CHECKING:
    import torch
    from PIL import Image


def hires_size(width: int, height: int, scale: float, multiple: int = 8) -> tuple[int, int]:
    """(width, height) of the second pass: int(size * scale), down to a multiple of 8 (A1111 sizes its latents
    by `target // 8`)."""
    return int(width * scale) // multiple * multiple, int(height * scale) // multiple * multiple


def hires_schedule(steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for an image-to-image call that runs exactly `steps` steps, as A1111's hires
    pass: a schedule of int(steps / min(strength, 0.999)) steps of which the last `steps` run. The strength given
    to the pipeline is nudged up by half a step so the pipeline's floor(total * strength) lands on `steps`."""
    if not 0 < strength <= 1:
        raise ValueError(f"the hires pass needs a denoising strength in (0, 1], got {strength}")
    total = int(steps / min(strength, 0.999))
    return total, min(1.0, (steps + 0.5) / total)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: Upscaler) -> torch.Tensor:
    """Latents (B, C, h, w) resized to `size` = (h', w') with torch's `mode` (A1111's latent upscale modes)."""
    import torch.nn.functional as F

    if upscaler.space != "latent":
        raise ValueError(f"{upscaler.name!r} upscales decoded images, not latents")
    return F.interpolate(latents, size=size, mode=upscaler.mode, antialias=upscaler.antialias)


def upscale_images(images: list[Image.Image], size: tuple[int, int], upscaler: Upscaler) -> list[Image.Image]:
    """Decoded images resized to `size` = (w, h) with PIL's Lanczos or nearest filter (A1111's PIL upscalers)."""
    from PIL import Image

    if upscaler.space != "image":
        raise ValueError(f"{upscaler.name!r} upscales latents, not decoded images")
    resample = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[upscaler.mode]
    return [image.resize(size, resample=resample) for image in images]


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed mix (modules/rng.py `slerp`) of two (C, H, W) noises: spherical interpolation of
    each (channel, column) vector over the rows, `strength` towards `high`. When the two are nearly parallel
    (mean cosine > 0.9995) A1111 falls back to low * strength + high * (1 - strength), weights as it has them."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)  # (C, W)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + (
        torch.sin(strength * omega) / so
    ).unsqueeze(1) * high


def variation_noise(
    shape: tuple[int, ...], seeds: list[int], subseeds: list[int], strength: float, dtype: Any
) -> torch.Tensor:
    """Initial noise (B, C, h, w) for a batch: row i is slerp(strength, noise(seeds[i]), noise(subseeds[i])), each
    noise drawn as the pipelines draw it (a CPU generator per image, in `dtype`) and mixed in float32."""
    import torch

    from sdxl.noise import randn_tensor

    rows = []
    for seed, subseed in zip(seeds, subseeds):
        noise = randn_tensor((1, *shape), torch.Generator("cpu").manual_seed(seed), "cpu", dtype)[0]
        subnoise = randn_tensor((1, *shape), torch.Generator("cpu").manual_seed(subseed), "cpu", dtype)[0]
        rows.append(slerp(strength, noise.float(), subnoise.float()).to(dtype))
    return torch.stack(rows)


def variation_latents(pipe: Any, params: GenerationParams, seed: int, subseed: int) -> torch.Tensor:
    """The text-to-image `latents` of A1111's variation seeds for `pipe` at the params' size (CPU)."""
    f = pipe.vae_scale_factor
    height = params.height or pipe.default_sample_size * f
    width = params.width or pipe.default_sample_size * f
    shape = (pipe.unet.config.in_channels, height // f, width // f)
    n = params.batch_size
    seeds, subseeds = [seed + i for i in range(n)], [subseed + i for i in range(n)]
    return variation_noise(shape, seeds, subseeds, params.subseed_strength, pipe.unet.dtype)


def hires_fix(
    base: Any,
    params: GenerationParams,
    progress: Any,
    first_pass: Callable[[str], Any],
    second_pass: Callable[[Any, int, float], list[Image.Image]],
) -> tuple[list[Image.Image], tuple[int, int]]:
    """A1111's hires fix: `first_pass(output_type)` (the text-to-image pass, "latent" or "pil" output), an upscale
    (of its latents, or of its decoded images), then `second_pass(upscaled, num_inference_steps, strength)`: an
    image-to-image pass that runs exactly `hires_steps` steps at `denoising_strength` (see `hires_schedule`). Each
    pass is the base alone or the base and the refiner, as the runner chose. `base` gives the VAE scale and decodes
    the first pass's latents when `progress` says it was stopped (then no second pass runs). Returns the images and
    the first pass's (width, height)."""
    from sdxl.pipelines.denoise import decode_latents

    upscaler = find_upscaler(params.hires_upscaler)
    latent_space = upscaler.space == "latent"
    first = first_pass("latent" if latent_space else "pil")
    f = base.vae_scale_factor
    size = (first.shape[-1] * f, first.shape[-2] * f) if latent_space else first[0].size
    if progress.stopped:  # stopped during the first pass: no second pass
        if latent_space:
            first = base.image_processor.postprocess(decode_latents(base.vae, first), output_type="pil")
        return first, size
    width, height = hires_size(*size, params.hires_scale)
    if latent_space:
        upscaled = upscale_latents(first, (height // f, width // f), upscaler)
    else:
        upscaled = upscale_images(first, (width, height), upscaler)
    total, strength = hires_schedule(params.hires_steps or params.steps, params.denoising_strength)
    return second_pass(upscaled, total, strength), size


def check_sampling_params(params: GenerationParams, *, text2img: bool) -> None:
    """The schedule type, hires fix and variation-seed fields (ValueError naming the field)."""
    find_schedule(params.schedule)
    check_hires_refiner_pass(params.hires_refiner_pass)
    if params.hires_scale is not None:
        if not text2img:
            raise ValueError("hires_scale (hires fix) is a text-to-image second pass; drop it for image-to-image and "
                             "inpainting")
        if not 1 <= params.hires_scale <= 8:
            raise ValueError(f"hires_scale must be between 1 and 8 (got {params.hires_scale})")
        find_upscaler(params.hires_upscaler)
        if params.hires_steps < 0:
            raise ValueError(f"hires_steps must be 0 (the same as steps) or more (got {params.hires_steps})")
        strength = params.denoising_strength
        if strength is None or not 0 < strength <= 1:
            raise ValueError(f"hires fix needs denoising_strength in (0, 1] for its second pass (got {strength})")
    if not 0 <= params.subseed_strength <= 1:
        raise ValueError(f"subseed_strength must be between 0 and 1 (got {params.subseed_strength})")
    if params.subseed_strength and not text2img:
        raise ValueError("subseed_strength (variation seeds) mixes the initial noise of text-to-image; drop it for "
                         "image-to-image and inpainting")
    if params.subseed is not None and params.subseed < -1:
        raise ValueError(f"subseed must be -1 (random) or a non-negative integer, got {params.subseed}")
