"""The one denoising core every SDXL mode shares: noise, timesteps, the CFG loop, the VAE decode.

Pipelines (text2img now; img2img, inpaint and the refiner hand-off later) prepare their inputs, then call
`denoise(...)`. The loop reproduces diffusers 0.42's SDXL loop step for step, so images match, and keeps the GPU
busy: nothing in it reads a tensor value on the host (no `.item()`, no branching on tensor data). Everything that
depends on values (denoising_end cut, step kwargs) is worked out before the loop.

Hooks for later modes (all optional):
- `model_input_hook(model_input, state) -> model_input`: runs after `scheduler.scale_model_input`, before the UNet
  (9-channel inpainting concatenates `state["mask"]` and `state["masked_image_latents"]` here).
- `after_step_hook(i, t, latents, state) -> latents`: runs after `scheduler.step`, before the step-end callback
  (4-channel inpainting blends the re-noised original back in outside the mask here; it can read the next
  timestep from `timesteps[i + 1]`, which it captures when built).
- `begin_index`: the scheduler's step index of `timesteps[0]` when the caller starts mid-schedule (img2img
  `strength`, refiner `denoising_start`); passed to `scheduler.set_begin_index`.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sdxl.noise import Generator, randn_tensor
from sdxl.pipelines.fast import loop_unet

# Tensors a step-end callback may read and replace (diffusers' `_callback_tensor_inputs` for SDXL text2img), and
# "denoised" (ours): the step's estimate of the clean latents, for previews (read-only in effect).
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "denoised")



def prepare_latents(
    scheduler: Any,
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: Generator,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Initial latents (B, C, h, w): fresh noise or the given `latents`, times `scheduler.init_noise_sigma`."""
    shape = tuple(shape)
    check_generator_count(generator, shape[0])
    if latents is None:
        latents = randn_tensor(shape, generator, device, dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(
            f"`latents` have shape {tuple(latents.shape)}, but this call needs {shape} "
            "(batch x latent channels x height / vae_scale_factor x width / vae_scale_factor)."
        )
    else:
        latents = latents.to(device=device, dtype=dtype)
    return latents * scheduler.init_noise_sigma


def check_generator_count(generator: Generator, batch_size: int) -> None:
    """A list of generators must hold one per image of the effective batch (prompts x num_images_per_prompt)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"A list of {len(generator)} generators was passed for an effective batch of {batch_size} images "
            "(prompts x num_images_per_prompt): pass one generator per image, or a single generator."
        )


def retrieve_timesteps(
    scheduler: Any,
    num_inference_steps: int | None,
    device: torch.device,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
) -> tuple[torch.Tensor, int]:
    """Call `scheduler.set_timesteps` with a step count, custom timesteps or custom sigmas; return
    (scheduler.timesteps, number of steps) as diffusers' `retrieve_timesteps` does, with its errors for a
    scheduler that takes no custom schedule of that kind."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    custom = {"timesteps": timesteps} if timesteps is not None else {"sigmas": sigmas} if sigmas is not None else {}
    if custom:
        (name,) = custom
        if not takes_custom_schedule(scheduler, name):
            kind = "timestep" if name == "timesteps" else "sigmas"
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom {kind} "
                "schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(device=device, **custom)
        return scheduler.timesteps, len(scheduler.timesteps)
    if not is_positive_int(num_inference_steps):
        raise ValueError(f"`num_inference_steps` must be a positive integer, but got {num_inference_steps!r}.")
    scheduler.set_timesteps(int(num_inference_steps), device=device)
    return scheduler.timesteps, num_inference_steps


def takes_custom_schedule(scheduler: Any, name: str) -> bool:
    """Whether `scheduler.set_timesteps` takes custom `name` ("timesteps" or "sigmas"): our schedulers say so in
    `supports_custom_<name>` (True where diffusers' class takes them for an SDXL config: UniPC's `sigmas` serve only
    flow-matching configs); other schedulers by their signature."""
    flag = getattr(type(scheduler), f"supports_custom_{name}", None)
    if flag is not None:
        return bool(flag)
    return name in inspect.signature(scheduler.set_timesteps).parameters


def is_positive_int(value: Any) -> bool:
    """An integer (Python or numpy, not bool) >= 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_denoising_fraction(name: str, value: float | None) -> None:
    """`denoising_end` / `denoising_start` must be None or a number strictly between 0 and 1.

    diffusers silently ignores anything that is not a Python float in (0, 1) and runs the full schedule; a value
    outside that range is almost always a mistake (e.g. 80 for 0.8), so we reject it instead.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float between 0 and 1 (exclusive), but got {value!r}.")
    if not 0 < value < 1:
        raise ValueError(
            f"`{name}` must lie strictly between 0 and 1 (a fraction of the schedule), but got {value!r}; "
            "leave it as None to run the whole schedule."
        )


def steps_before_denoising_end(timesteps: torch.Tensor, denoising_end: float, num_train_timesteps: int) -> int:
    """How many of `timesteps` run before `denoising_end` cuts the schedule.

    The cut is in discrete training timesteps, not in steps: keep every t >= round(T - denoising_end * T), so
    the base stops exactly where a refiner with `denoising_start = denoising_end` takes over.
    """
    cutoff = round(num_train_timesteps - denoising_end * num_train_timesteps)
    return int((timesteps >= cutoff).sum())


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) guidance weights -> (B, embedding_dim) sinusoidal embedding of w * 1000 ([sin, cos] halves), the
    `timestep_cond` of guidance-distilled UNets (LCM, arXiv:2310.04378; diffusers' `get_guidance_scale_embedding`)."""
    if w.ndim != 1:
        raise ValueError(f"guidance weights must be a 1-D tensor, got shape {tuple(w.shape)}")
    w = w * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    args = w.to(dtype)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if embedding_dim % 2 == 1 else emb


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale, Lin et al. 2023 (arXiv:2305.08891) section 3.4: match the per-sample std of the text
    prediction (unbiased std, as torch's default), mixed by `guidance_rescale`."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def classifier_free_guidance(
    noise_pred: torch.Tensor, guidance_scale: float | Sequence[float], guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Ho & Salimans 2022: uncond + w * (cond - uncond) on a (2B, ...) prediction stacked [uncond; cond].

    `guidance_scale` is one number, or one per image (B of them: a batch of different requests); each row is then
    guided with its own scale by exactly the operations a single scale uses, so its result is the same as alone.
    """
    noise_uncond, noise_text = noise_pred.chunk(2)
    if isinstance(guidance_scale, numbers.Real):
        guided = noise_uncond + guidance_scale * (noise_text - noise_uncond)
    else:
        # (1, C, h, w) slices, one per image
        guided = torch.cat([
            noise_uncond[i : i + 1] + scale * (noise_text[i : i + 1] - noise_uncond[i : i + 1])
            for i, scale in enumerate(guidance_scale)
        ])
    if guidance_rescale > 0.0:
        guided = rescale_noise_cfg(guided, noise_text, guidance_rescale)
    return guided


def guidance_per_image(guidance_scale: float | Sequence[float], images: int) -> float | tuple[float, ...]:
    """A guidance scale for a call: a number as it is, or a sequence with one scale per image (equal scales collapse
    to one number). Guidance must be on (> 1) for every image or for none: the batch runs one UNet pass shape."""
    if isinstance(guidance_scale, numbers.Real):
        return guidance_scale
    scales = tuple(float(g) for g in guidance_scale)
    if len(scales) != images:
        raise ValueError(
            f"`guidance_scale` has {len(scales)} values, but this call makes {images} images (prompts x "
            "num_images_per_prompt): pass one number, or one per image."
        )
    if len(set(scales)) == 1:
        return scales[0]
    if any(g > 1 for g in scales) and not all(g > 1 for g in scales):
        raise ValueError(
            f"`guidance_scale` per image {list(scales)} mixes guided (> 1) and unguided (<= 1) images; run them as "
            "separate calls."
        )
    return scales


def guidance_enabled(guidance_scale: float | Sequence[float]) -> bool:
    """Whether classifier-free guidance runs: a scale over 1 (every per-image scale, which guidance_per_image
    checked)."""
    if isinstance(guidance_scale, numbers.Real):
        return guidance_scale > 1
    return all(g > 1 for g in guidance_scale)


def scheduler_step_kwargs(scheduler: Any, generator: Generator, eta: float) -> dict[str, Any]:
    """`eta` and `generator` for `scheduler.step`, each only where the scheduler's step takes it (read once per
    call, as diffusers does: eta only means something to DDIM-like schedulers)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def check_callback_tensor_inputs(names: Sequence[str], allowed: Sequence[str]) -> None:
    """Raise a ValueError naming the tensors a step-end callback asked for that this pipeline does not offer."""
    unknown = [k for k in names if k not in allowed]
    if unknown:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` may only name {list(allowed)}, but also got {unknown}."
        )


def denoise(
    pipe: Any,
    state: dict[str, torch.Tensor],
    timesteps: torch.Tensor,
    *,
    progress_total: int,
    step_kwargs: dict[str, Any],
    callback_on_step_end: Callable[..., dict[str, torch.Tensor] | None] | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    model_input_hook: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
    after_step_hook: Callable[[int, torch.Tensor, torch.Tensor, dict], torch.Tensor] | None = None,
    begin_index: int = 0,
    cross_attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run the sampler over `timesteps`; return the final latents.

    `state` holds the tensors of the call: "latents" (B, C, h, w), and, already stacked [negative; positive] when
    guidance is on, "prompt_embeds" (2B, 77, D), "add_text_embeds" (2B, P), "add_time_ids" (2B, n_ids); modes add
    their own (mask, ...). The step-end callback `callback_on_step_end(pipe, i, t, {name: state[name]})` may
    return replacements for any of them. Guidance settings are read from `pipe` at each step
    (`do_classifier_free_guidance`, `guidance_scale`, `guidance_rescale`, `interrupt`: plain Python values) so a
    callback can change them, as with diffusers.
    """
    # the UNet, or the fast path's runner (compiled / CUDA-graph replay) when pipe.optimize() set one
    unet, scheduler = loop_unet(pipe), pipe.scheduler
    # only when given: UNets written against diffusers' older signatures (and test stand-ins) need not take them
    unet_kwargs = {"cross_attention_kwargs": cross_attention_kwargs} if cross_attention_kwargs else {}
    if state.get("timestep_cond") is not None:  # guidance-distilled (LCM) UNets
        unet_kwargs["timestep_cond"] = state["timestep_cond"]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin_index)
    order = getattr(scheduler, "order", 1)
    last = len(timesteps) - 1
    with pipe.progress_bar(total=progress_total) as progress_bar:
        for i, t in enumerate(timesteps):
            if pipe.interrupt:
                continue
            latents = state["latents"]
            do_cfg = pipe.do_classifier_free_guidance
            # (2B, C, h, w) under guidance: rows [uncond; cond]
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if model_input_hook is not None:
                model_input = model_input_hook(model_input, state)
            added_cond = {"text_embeds": state["add_text_embeds"], "time_ids": state["add_time_ids"]}
            if state.get("image_embeds") is not None:  # IP-Adapter: one tensor per adapter
                added_cond["image_embeds"] = state["image_embeds"]
            noise_pred = unet(
                model_input, t, encoder_hidden_states=state["prompt_embeds"], added_cond_kwargs=added_cond,
                return_dict=False, **unet_kwargs,
            )[0]
            if do_cfg:
                noise_pred = classifier_free_guidance(noise_pred, pipe.guidance_scale, pipe.guidance_rescale)
            stepped = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)
            latents = stepped[0]
            if after_step_hook is not None:
                latents = after_step_hook(i, t, latents, state)
            state["latents"] = latents
            # the scheduler's estimate of the clean latents where it gives one (live previews show it)
            state["denoised"] = stepped[1] if len(stepped) > 1 else latents

            if callback_on_step_end is not None:
                outputs = callback_on_step_end(pipe, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs})
                state.update({k: v for k, v in (outputs or {}).items() if k in state})
            # second-order schedulers take two passes per step: count steps, not passes
            if i == last or (i + 1) % order == 0:
                progress_bar.update()
    return state["latents"]


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, 4, h, w) -> image (B, 3, h * f, w * f) in about [-1, 1].

    Undoes the VAE scaling (and `latents_mean`/`latents_std` when the config has them). An fp16 VAE whose config
    says `force_upcast` decodes in fp32 (the SDXL VAE overflows in fp16) and is cast back afterwards; a half-precision
    decode that still gives NaN/Inf is redone in float32.
    """
    needs_upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if needs_upcast:
        _cast_weights(vae, torch.float32)
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        # (1, C, 1, 1) per-channel statistics
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    try:
        image = vae.decode(latents).sample
    finally:
        if needs_upcast:
            _cast_weights(vae, torch.float16)
    if vae.dtype != torch.float32 and not bool(torch.isfinite(image).all()):
        # NaN/Inf from a half-precision VAE (the SDXL VAE overflows in fp16): decode once more in float32 rather than
        # return black images (diffusers returns them as they are)
        image = _decode_in_float32(vae, latents)
    return image


def _decode_in_float32(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Decode with the VAE cast to float32 for this call only; the result is in the VAE's own dtype again."""
    dtype = vae.dtype
    _cast_weights(vae, torch.float32)
    try:
        return vae.decode(latents.float()).sample.to(dtype)
    finally:
        _cast_weights(vae, dtype)


def _cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    # Leave inference mode for the cast: weights made inside it would be inference tensors, which can no longer be
    # updated in place (fine-tuning, LoRA merges) once the call returns.
    with torch.inference_mode(False):
        module.to(dtype=dtype)
