"""Turn a `GenerationParams` into pipeline calls: the one place the command and the server run a generation.

`Runner` keeps the loaded base model (and refiner) between calls, picks the task's pipeline class on the same
module objects (`from_pipe`: text-to-image, image-to-image, inpainting), sets the sampler from the model's own
scheduler config for every call (so one call's sampler never leaks into the next), seeds one CPU generator per
image (seed, seed + 1, ...), runs the base and, with a refiner, hands the latents over at `refiner_switch_at`
(the ensemble of experts: `Runner.denoise_pass`, for the first pass and for the hires fix's second), and reports
every denoising step to an optional callback, which can stop the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sdxl.generation import (
    IMG2IMG,
    INPAINT,
    TEXT2IMG,
    GeneratedImage,
    Progress,
    StepCallback,
    check_images,
    check_params,
    mode_of,
    resolve_seed,
)
from sdxl.hires import hires_fix, variation_latents
from sdxl.params import GenerationParams, find_sampler, find_schedule, refiner_in_passes, sampler_name
from sdxl.step_plan import FIRST_PASS, HIRES_PASS, plan_stages, refiner_alone

if TYPE_CHECKING:
    import torch
    from PIL import Image

# mode -> pipeline class exported by `sdxl`
PIPELINE_CLASSES = {
    TEXT2IMG: "StableDiffusionXLPipeline",
    IMG2IMG: "StableDiffusionXLImg2ImgPipeline",
    INPAINT: "StableDiffusionXLInpaintPipeline",
}
# the refiner stage of each mode (text-to-image hands its latents to an image-to-image refiner)
REFINER_CLASSES = {TEXT2IMG: IMG2IMG, IMG2IMG: IMG2IMG, INPAINT: INPAINT}


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

    def drop_captures(self) -> None:
        """Drop the fast path's captured CUDA graphs of the loaded models (each holds its activations' memory), as
        after an out-of-memory failure; the next call captures again."""
        for entry in (self._base, self._refiner):
            state = getattr(entry[1], "_fast", None) if entry is not None else None
            if state is not None:
                state.runner.reset()

    @property
    def loaded_model(self) -> str | None:
        """The name of the base model in memory, if any."""
        return self._base[0] if self._base is not None else None

    def task_pipe(self, base: Any, mode: str) -> Any:
        """`base`'s pipeline for `mode` (txt2img, img2img, inpaint), on the same modules."""
        import sdxl

        cls = getattr(sdxl, PIPELINE_CLASSES[mode])
        if type(base) is cls:
            pipe = base
        else:
            pipe = cls.from_pipe(base)
            # from_pipe shares the scheduler the last job set: "no sampler" must mean the model's own here too
            pipe._sdxl_default_scheduler = getattr(base, "_sdxl_default_scheduler", base.scheduler)
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
        the rest; with the hires fix too, in the pass(es) `params.hires_refiner_pass` names, each pass starting on
        the base. `on_step` sees every step (see `Step`); it may return "stop" or raise `Cancelled`: a stopped run
        starts no later stage.
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

        progress = Progress(on_step, plan_stages(base.scheduler, params, text2img=mode == TEXT2IMG) if on_step else ())
        images, first_size = self.run_passes(base, mode, params, kwargs, common, seed, progress)
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

    def run_passes(
        self,
        base: Any,
        mode: str,
        params: GenerationParams,
        kwargs: dict,
        common: dict,
        seed: int,
        progress: Progress,
    ) -> tuple[list[Image.Image], tuple[int, int] | None]:
        """The first pass (`kwargs`), and with the hires fix its second pass (`common` arguments, fresh noise from
        `seed`), each with the refiner where `params` puts it. Returns the images and, with the hires fix, the first
        pass's (width, height)."""
        import torch

        first_refiner, hires_refiner = refiner_in_passes(params)
        refine = dict(common, prompt_2=None)  # the refiner reads `prompt` only
        if mode == INPAINT:
            # as diffusers' guide: the inpainting refiner takes the base's latents as `image`, and the mask
            refine.update(mask_image=kwargs["mask_image"], width=params.width, height=params.height)

        def first_pass(output_type: str = "pil") -> Any:
            first_refine = refine if first_refiner else None
            return self.denoise_pass(base, mode, params, kwargs, first_refine, progress, FIRST_PASS, output_type)

        if params.hires_scale is None:
            return first_pass(), None
        i2i = self.task_pipe(base, IMG2IMG)

        def second_pass(upscaled: Any, steps: int, strength: float) -> list[Image.Image]:
            # fresh noise from the same seeds; the refiner goes on with the base's generators
            fresh = [torch.Generator("cpu").manual_seed(seed + i) for i in range(params.batch_size)]
            stage = dict(common, num_inference_steps=steps, generator=fresh)
            call = dict(stage, image=upscaled, strength=strength)
            hires_refine = dict(stage, prompt_2=None) if hires_refiner else None
            return self.denoise_pass(i2i, IMG2IMG, params, call, hires_refine, progress, HIRES_PASS)

        return hires_fix(base, params, progress, first_pass, second_pass)

    def denoise_pass(
        self,
        pipe: Any,
        mode: str,
        params: GenerationParams,
        call: dict,
        refine: dict | None,
        progress: Progress,
        stages: tuple[str, str],
        output_type: str = "pil",
    ) -> Any:
        """One denoising pass of `pipe` (a `mode` pipeline) with the arguments `call`: alone when `refine` is None,
        else the ensemble of experts: `pipe` stops at `params.refiner_switch_at` (its `denoising_end`, latents out)
        and the refiner (`refine` arguments, the base's scheduler) denoises the rest (`denoising_start`) on those
        latents. An image-to-image pass that starts at or below the switch runs on the refiner alone, with the same
        image and strength (A1111 switches models at its first step). Stopped during the base, the refiner does not
        start. `stages` names the (base, refiner) stages for `progress`; returns the images, or latents when
        `output_type` is "latent"."""
        if refine is None:
            return pipe(**call, output_type=output_type, callback_on_step_end=progress.callback(stages[0])).images
        switch = params.refiner_switch_at
        if "strength" in call and refiner_alone(pipe.scheduler, call["num_inference_steps"], call["strength"], switch):
            refiner = self.refiner_for(params.refiner, pipe, mode)
            alone = dict(refine, image=call["image"], strength=call["strength"])
            return refiner(**alone, output_type=output_type, callback_on_step_end=progress.callback(stages[1])).images
        latents = pipe(
            **call, denoising_end=switch, output_type="latent", callback_on_step_end=progress.callback(stages[0])
        ).images
        if progress.stopped:  # stopped during the base: the refiner does not start
            return latents if output_type == "latent" else _decode(pipe, latents)
        refiner = self.refiner_for(params.refiner, pipe, mode)
        return refiner(
            **refine,
            image=latents,
            denoising_start=switch,
            output_type=output_type,
            callback_on_step_end=progress.callback(stages[1]),
        ).images

    def refiner_for(self, name: str, base: Any, mode: str) -> Any:
        """The refiner `name` as the pipeline that follows a `mode` base (loaded once, sharing the base's second
        text encoder and VAE), on the base's scheduler: the hand-off continues the base's schedule."""
        refiner = self._load_refiner(name, base, mode)
        refiner.scheduler = base.scheduler
        return refiner

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


def _decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """PIL images of latents a stopped base stage handed back (what its own decode would have given)."""
    from sdxl.pipelines.denoise import decode_latents

    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type="pil")


