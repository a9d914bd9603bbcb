"""Turn a `GenerationParams` into pipeline calls: the one place the command and the server run a generation.

`Runner` keeps the loaded base model (and refiner) between calls, picks the task's pipeline class on the same
module objects (`from_pipe`: text-to-image, image-to-image, inpainting), sets the sampler from the model's own
scheduler config for every call (so one call's sampler never leaks into the next), seeds one CPU generator per
image (seed, seed + 1, ...), runs the base and, with a refiner, hands the latents over at `refiner_switch_at`
(the ensemble of experts), and reports every denoising step to an optional callback, which can stop the run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sdxl.hires import check_sampling_params, hires_fix, variation_latents
from sdxl.params import GenerationParams, find_sampler, find_schedule, sampler_name

if TYPE_CHECKING:
    import torch
    from PIL import Image

TEXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"

# mode -> pipeline class exported by `sdxl`
PIPELINE_CLASSES = {
    TEXT2IMG: "StableDiffusionXLPipeline",
    IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
    INPAINT: "StableDiffusionXLInpaintPipeline",
}
# the refiner stage of each mode (text-to-image hands its latents to an image-to-image refiner)
REFINER_CLASSES = {TEXT2IMG: IMG2IMG, IMG2IMG: IMG2IMG, INPAINT: INPAINT}

SEED_RANGE = 2**32
_SEEDS = random.Random()  # its own state: drawing a random seed leaves the global `random` module untouched


class Cancelled(Exception):
    """Raised by a step callback to abandon a run: nothing is decoded and no image is returned."""


@dataclass
class Step:
    """One finished denoising step, as the step callback sees it.

    `step` counts UNet steps done in the whole run (base and refiner), `total` the steps the run will take;
    `latents` are the current (B, C, h, w) latents of the stage `stage` ("base", "refiner" or "hires": the hires
    fix's second pass), whose pipeline is `pipe` (its VAE decodes them); `denoised` is the step's estimate of the
    finished latents (what a preview should show; the latents themselves where the scheduler gives no estimate).
    """

    step: int
    total: int
    stage: str
    latents: torch.Tensor
    pipe: Any
    denoised: torch.Tensor | None = None


# What a step callback returns: None to go on, "stop" to end denoising here and decode what there is (A1111's
# interrupt and skip); raising `Cancelled` abandons the run.
StepCallback = Callable[[Step], "str | None"]


@dataclass
class GeneratedImage:
    """One image of a run, with the exact parameters that made it (its own seed, size and sampler)."""

    image: Image.Image
    params: GenerationParams


def pick_device(name: str = "auto") -> torch.device:
    """A device by name; "auto" picks CUDA, then MPS, then the CPU. ValueError for a name torch does not know or a
    GPU that is not there."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{name!r} is not a device name ({err}); try cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} was asked for, but no CUDA GPU is available here; use cpu")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype by name ("float32", "float16", "bfloat16"); "auto" is float16 on an accelerator, float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, not {name!r}")
    return getattr(torch, name)


def mode_of(image: Any, mask: Any) -> str:
    """txt2img without an input image, img2img with one, inpaint with an image and a mask."""
    if mask is not None and image is None:
        raise ValueError("a mask needs an input image to inpaint; pass the image too")
    return TEXT2IMG if image is None else INPAINT if mask is not None else IMG2IMG


def resolve_seed(seed: int | None) -> int:
    """A seed of None or -1 means a random one (as A1111); the value used is what the metadata records."""
    if seed is None or seed == -1:
        return _SEEDS.randrange(SEED_RANGE)
    if seed < 0:
        raise ValueError(f"seed must be -1 (random) or a non-negative integer, got {seed}")
    return int(seed)


class GenerationFailed(RuntimeError):
    """The run finished but its images are not usable (NaN or all-black decodes)."""


class Runner:
    """Runs generations on one device, keeping the last base model and refiner loaded.

    `device` and `dtype` apply to every model it loads; `quiet` hides the progress bars. `resolve` maps the model
    names in `GenerationParams` to what is loaded (a folder, a `.safetensors` file, a hub id or a demo alias); by
    default a name is its own source. LoRA names are files or names in `lora_dir`, or whatever `resolve_lora`
    (name -> file path) accepts when given (the server allows names inside its LoRA folder only). `fast` turns on
    `pipe.optimize()`'s defaults for every model it loads.
    """

    def __init__(
        self, device: Any = "cpu", dtype: Any = None, *, quiet: bool = True, resolve: Callable[[str], str] = str,
        lora_dir: Any = None, resolve_lora: Callable[[str], Any] | None = None, fast: bool = False,
    ):
        import torch

        self.fast = fast  # pipe.optimize() on every model loaded (`sdxl generate --fast`)
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float32
        self.quiet = quiet
        self.resolve = resolve
        self.lora_dir = lora_dir  # where LoRA names (<lora:NAME:W> tags, params.loras) are looked up
        self.resolve_lora = resolve_lora
        self._base: tuple[str, Any] | None = None
        self._refiner: tuple[str, Any] | None = None

    # ---- models ------------------------------------------------------------------------------------------------

    def load(self, model: str) -> Any:
        """The base pipeline for `model` (a folder, a hub id or "demo"), loaded once and kept until another
        model is asked for."""
        if self._base is not None and self._base[0] == model:
            return self._base[1]
        import sdxl

        self.unload()
        pipe = _open(sdxl.DiffusionPipeline, self.resolve(model), torch_dtype=self.dtype)
        pipe.to(self.device)
        if self.fast:
            pipe.optimize()
        pipe.set_progress_bar_config(disable=self.quiet)
        pipe._sdxl_default_scheduler = pipe.scheduler
        self._base = (model, pipe)
        return pipe

    def unload(self) -> None:
        """Drop the loaded models (and free what the device cached for them)."""
        self._base = self._refiner = None
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def loaded_model(self) -> str | None:
        """The name of the base model in memory, if any."""
        return self._base[0] if self._base is not None else None

    def task_pipe(self, base: Any, mode: str) -> Any:
        """`base`'s pipeline for `mode` (txt2img, img2img, inpaint), on the same modules."""
        import sdxl

        cls = getattr(sdxl, PIPELINE_CLASSES[mode])
        pipe = base if type(base) is cls else cls.from_pipe(base)
        pipe.set_progress_bar_config(disable=self.quiet)
        return pipe

    def _load_refiner(self, name: str, base: Any, mode: str) -> Any:
        import sdxl

        cls = getattr(sdxl, PIPELINE_CLASSES[REFINER_CLASSES[mode]])
        if self._refiner is None or self._refiner[0] != name:
            self._refiner = None
            # the refiner shares the base's second text encoder and VAE objects: no second copy in memory
            refiner = _open(
                cls, self.resolve(name), text_encoder_2=base.text_encoder_2, vae=base.vae, torch_dtype=self.dtype
            )
            refiner.to(self.device)
            if self.fast:
                refiner.optimize()
            refiner._sdxl_default_scheduler = refiner.scheduler
            self._refiner = (name, refiner)
        refiner = self._refiner[1]
        refiner = refiner if type(refiner) is cls else cls.from_pipe(refiner)
        refiner.set_progress_bar_config(disable=self.quiet)
        return refiner

    # ---- running -----------------------------------------------------------------------------------------------

    def run(
        self,
        params: GenerationParams,
        *,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        on_step: StepCallback | None = None,
    ) -> list[GeneratedImage]:
        """Generate `params.batch_size` images; return each with its own parameters (seed, size, sampler).

        `image` makes it image-to-image (`params.denoising_strength`), `image` and `mask` inpainting (white =
        redraw). With `params.refiner` set, the base stops at `params.refiner_switch_at` and the refiner denoises
        the rest. `on_step` sees every step (see `Step`); it may return "stop" or raise `Cancelled`.
        """
        import torch

        mode = mode_of(image, mask)
        check_params(params, mode)
        seed = resolve_seed(params.seed)
        base = self.task_pipe(self.load(params.model), mode)
        sampler = self.set_sampler(base, params.sampler, params.schedule)
        prompt, lora_hashes = self.apply_loras(base, params)
        # one CPU generator per image: image i of a batch is the image of seed + i alone (diffusers' generator lists)
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(params.batch_size)]
        common = dict(
            prompt=prompt,
            prompt_2=params.prompt_2 or None,
            negative_prompt=params.negative_prompt or None,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.batch_size,
            generator=generators,
            prompt_syntax=params.prompt_syntax,
            long_prompts=params.long_prompts,
        )
        kwargs = dict(common)
        if mode in (TEXT2IMG, INPAINT):
            kwargs.update(width=params.width, height=params.height)
        if mode in (IMG2IMG, INPAINT):
            kwargs.update(image=image, strength=params.denoising_strength)
        if mode == INPAINT:
            if params.mask_blur:
                mask = base.mask_processor.blur(mask, blur_factor=params.mask_blur)
            kwargs.update(mask_image=mask, padding_mask_crop=params.padding_mask_crop)

        subseed = None
        if params.subseed_strength:
            subseed = resolve_seed(params.subseed)
            kwargs["latents"] = variation_latents(base, params, seed, subseed).to(self.device)

        progress = Progress(on_step, params)
        first_size = None
        if params.hires_scale is not None:
            i2i = self.task_pipe(base, IMG2IMG)
            images, first_size = hires_fix(base, i2i, params, kwargs, common, seed, progress)
        elif not params.refiner:
            images = base(**kwargs, callback_on_step_end=progress.callback("base")).images
        else:
            latents = base(
                **kwargs, denoising_end=params.refiner_switch_at, output_type="latent",
                callback_on_step_end=progress.callback("base"),
            ).images
            if progress.stopped:  # stopped during the base: the refiner does not start
                images = _decode(base, latents)
            else:
                refiner = self._load_refiner(params.refiner, base, mode)
                refiner.scheduler = base.scheduler
                refine = dict(common, prompt_2=None, image=latents, denoising_start=params.refiner_switch_at)
                if mode == INPAINT:
                    # as diffusers' guide: the inpainting refiner takes the base's latents as `image`, and the mask
                    refine.update(mask_image=kwargs["mask_image"], width=params.width, height=params.height)
                images = refiner(**refine, callback_on_step_end=progress.callback("refiner")).images
        check_images(images)
        schedule = find_schedule(params.schedule)
        used = replace(params, seed=seed, sampler=sampler, schedule=None if schedule.name == "automatic" else schedule.label,
                       lora_hashes=lora_hashes)
        if subseed is not None:
            used = replace(used, subseed=subseed)
        results = []
        for i, img in enumerate(images):
            # with hires fix, Size is the first pass's (as A1111 records it) and the image is hires_scale larger
            width, height = first_size or (img.width, img.height)
            one = replace(used, seed=seed + i, width=width, height=height, batch_size=1)
            if subseed is not None:
                one = replace(one, subseed=subseed + i)
            results.append(GeneratedImage(img, one))
        return results

    def apply_loras(self, pipe: Any, params: GenerationParams) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Activate the LoRAs of `params.loras` and of the prompt's `<lora:NAME:WEIGHT>` tags (with the "a1111"
        syntax) on the base pipeline, each file loaded once as an adapter named by its file stem; no LoRA at all
        when there are none. Returns the prompt without its tags and the (name, A1111 hash) of each LoRA used."""
        from sdxl.loading.lora_files import a1111_lora_hash, find_lora
        from sdxl.prompts.lora_tags import extract_lora_tags, merge_lora_choices

        prompt, tags = params.prompt, []
        if params.prompt_syntax == "a1111":
            prompt, tags = extract_lora_tags(params.prompt)
        chosen = merge_lora_choices(list(params.loras), tags)
        loaded = pipe.get_list_adapters()
        names, weights, hashes = [], [], []
        for name, weight in chosen:
            path = self.resolve_lora(name) if self.resolve_lora else find_lora(name, self.lora_dir)
            adapter = path.stem
            if not any(adapter in v for v in loaded.values()):
                pipe.load_lora_weights(path, adapter_name=adapter)
            names.append(adapter)
            weights.append(float(weight))
            hashes.append((adapter, a1111_lora_hash(path)))
        if names or loaded:
            pipe.set_adapters(names, weights)
        return prompt, tuple(hashes)

    def set_sampler(self, pipe: Any, name: str | None, schedule: str | None = None) -> str:
        """Give `pipe` a fresh scheduler from its model's own config (with the sampler's options when `name` is
        given, and A1111's schedule type `schedule` when not Automatic); return the sampler's name as A1111 writes
        it."""
        import sdxl

        default = getattr(pipe, "_sdxl_default_scheduler", pipe.scheduler)
        if name:
            sampler = find_sampler(name)
            pipe.scheduler = getattr(sdxl, sampler.scheduler).from_config(default.config, **sampler.options)
        else:
            pipe.scheduler = type(default).from_config(default.config)
        schedule_type = find_schedule(schedule)
        if schedule_type.name != "automatic":
            pipe.scheduler.set_schedule_type(schedule_type.name)
        return sampler_name(pipe.scheduler)


def _open(cls: Any, source: str, **kwargs: Any) -> Any:
    """`cls.from_single_file` for a .safetensors file, `cls.from_pretrained` for anything else."""
    import os

    if source.endswith(".safetensors") and os.path.isfile(source):
        return cls.from_single_file(source, **kwargs)
    return cls.from_pretrained(source, **kwargs)


def check_images(images: list[Image.Image]) -> None:
    """An all-black image is what a NaN decode turns into (the pipelines already retried the VAE in float32):
    never hand it back as a result."""
    import numpy as np

    for i, image in enumerate(images):
        if not np.asarray(image).any():
            raise GenerationFailed(
                f"image {i} decoded to all black (NaN or overflow in the VAE, even in float32); try another seed, "
                "a lower guidance scale, or float32/bfloat16 instead of float16"
            )


def _decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """PIL images of latents a stopped base stage handed back (what its own decode would have given)."""
    from sdxl.pipelines.denoise import decode_latents

    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type="pil")


def check_params(params: GenerationParams, mode: str) -> None:
    """The mistakes a `GenerationParams` can show before any model is loaded (ValueError naming the field)."""
    if params.steps < 1:
        raise ValueError(f"steps must be at least 1 (got {params.steps})")
    if params.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {params.batch_size})")
    for name in ("width", "height"):
        value = getattr(params, name)
        if value is not None and (value <= 0 or value % 8):
            raise ValueError(f"{name} must be a positive multiple of 8 (got {value}); try {max(8, value // 8 * 8)}")
    if mode != TEXT2IMG:
        strength = params.denoising_strength
        if strength is None:
            raise ValueError("image-to-image and inpainting need denoising_strength, in [0, 1]")
        if not 0 <= strength <= 1:
            raise ValueError(f"denoising_strength must be between 0 and 1 (got {strength})")
    if params.refiner and not (params.refiner_switch_at is not None and 0 < params.refiner_switch_at < 1):
        raise ValueError(f"refiner_switch_at must lie strictly between 0 and 1 (got {params.refiner_switch_at})")
    if params.mask_blur is not None and params.mask_blur < 0:
        raise ValueError(f"mask_blur must be 0 or more pixels (got {params.mask_blur})")
    if params.padding_mask_crop is not None and params.padding_mask_crop < 0:
        raise ValueError(f"padding_mask_crop must be 0 or more pixels (got {params.padding_mask_crop})")
    check_sampling_params(params, text2img=mode == TEXT2IMG)
    if params.refiner and params.padding_mask_crop is not None:
        raise ValueError("padding_mask_crop cannot be combined with a refiner (the base would hand over the latents "
                         "of the crop only); drop one of them")


class Progress:
    """Counts steps across the base and refiner stages and forwards them to the caller's step callback."""

    def __init__(self, on_step: StepCallback | None, params: GenerationParams):
        self.on_step = on_step
        self.params = params
        self.done = 0  # steps finished by earlier stages
        self.total = 0
        self.stopped = False

    def callback(self, stage: str) -> Callable[..., dict] | None:
        """A diffusers-style step-end callback object for one stage (None without a step callback)."""
        if self.on_step is None:
            return None
        offset = None

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
            nonlocal offset
            if offset is None:  # the stage's step count is known once its schedule is set
                offset = self.done
                stage_steps = pipe.num_timesteps
                if stage == "base" and self.params.refiner:
                    # the refiner runs the rest of the schedule: about steps * (1 - switch) more
                    rest = round(self.params.steps * (1 - self.params.refiner_switch_at))
                    self.total = stage_steps + max(rest, 1)
                elif stage == "base" and self.params.hires_scale is not None:
                    self.total = stage_steps + (self.params.hires_steps or self.params.steps)
                else:
                    self.total = max(self.total, offset + stage_steps)
            self.done = offset + i + 1
            action = self.on_step(Step(self.done, max(self.total, self.done), stage, tensors["latents"], pipe,
                                       tensors.get("denoised")))
            if action == "stop":
                pipe._interrupt = True
                self.stopped = True
            return {}

        on_step_end.tensor_inputs = ("latents", "denoised")  # read by the pipelines, as diffusers' callback objects
        return on_step_end
