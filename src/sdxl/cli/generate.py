"""`sdxl generate`, `sdxl img2img` and `sdxl inpaint`: flags -> GenerationParams -> `sdxl.runner.Runner`."""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import replace
from pathlib import Path

from sdxl.cli.common import DTYPES, UsageError, resolve_device, resolve_dtype
from sdxl.params import (
    DEFAULT_HIRES_REFINER_PASS,
    HIRES_REFINER_PASSES,
    GenerationParams,
    find_sampler,
    find_schedule,
    find_upscaler,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the three generating subcommands."""
    gen = sub.add_parser(
        "generate",
        help="generate images from a text prompt",
        description="Generate images from a text prompt and save them as PNG (with A1111 `parameters` metadata).",
    )
    _add_generation_flags(gen, size=True)
    _add_refiner_flags(gen)
    _add_hires_flags(gen)

    img2img = sub.add_parser(
        "img2img",
        help="redraw an image guided by a text prompt",
        description="Image-to-image: noise the input image part of the way (--strength) and denoise it towards the "
        "prompt. The output has the input's size.",
    )
    _add_generation_flags(img2img, size=False)
    img2img.add_argument("--image", "-i", required=True, help="the input image (PNG, JPEG, ...)")
    img2img.add_argument("--strength", type=float, default=0.3,
                         help="how much to change the image: 0 keeps it, 1 redraws it (default: 0.3)")
    _add_refiner_flags(img2img)

    inpaint = sub.add_parser(
        "inpaint",
        help="redraw the masked part of an image",
        description="Inpainting: redraw where the mask is white, keep where it is black. Works with a base model "
        "(latent blending) and with a 9-channel inpainting model.",
    )
    _add_generation_flags(inpaint, size=True)
    inpaint.add_argument("--image", "-i", required=True, help="the input image")
    inpaint.add_argument("--mask", required=True, help="the mask image: white = redraw, black = keep")
    inpaint.add_argument("--strength", type=float, default=0.9999,
                         help="how much to change the masked region, in [0, 1] (default: 0.9999, as diffusers)")
    inpaint.add_argument("--mask-blur", type=int, default=0, help="blur the mask edge by this many pixels (default: 0)")
    inpaint.add_argument("--padding-mask-crop", type=int, default=None,
                         help="inpaint only a crop around the mask, padded by this many pixels, then paste it back")
    _add_refiner_flags(inpaint)


def _add_generation_flags(parser: argparse.ArgumentParser, *, size: bool) -> None:
    """The flags every generating subcommand shares (prompts, model, sampler, seed, output, device)."""
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        help="a diffusers-layout folder or a hub id (e.g. stabilityai/stable-diffusion-xl-base-1.0)",
    )
    parser.add_argument("--output", "-o", default="out.png", help="output PNG path (default: out.png); with "
                        "--num-images N > 1 the files are NAME-0.png ... NAME-(N-1).png")
    parser.add_argument("--negative", default="", help="negative prompt: what to steer away from")
    parser.add_argument("--prompt-2", default=None, help="prompt for the second text encoder (default: the prompt)")
    parser.add_argument("--steps", type=int, default=30, help="number of denoising steps (default: 30)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5.0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    if size:
        parser.add_argument("--width", type=int, default=None, help="image width, divisible by 8 (default: the "
                            "model's, or the input image's)")
        parser.add_argument("--height", type=int, default=None, help="image height, divisible by 8 (default: the "
                            "model's, or the input image's)")
    parser.add_argument("--num-images", type=int, default=1, help="how many images (seeds SEED, SEED+1, ...)")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="sampler name, e.g. 'Euler' or 'DPM++ 2M Karras' (see `sdxl schedulers`; default: the model's)",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        help="AUTOMATIC1111's schedule type for the k-diffusion samplers: Automatic (default: the sampler's own), "
        "Uniform, Karras, Exponential, Polyexponential, 'SGM Uniform', 'KL Optimal', 'Align Your Steps', Simple, "
        "Normal, DDIM, Beta",
    )
    parser.add_argument(
        "--prompt-syntax",
        choices=("none", "a1111", "compel"),
        default="none",
        help="prompt weighting: a1111 = (word:1.2), (word), [word]; compel = word+, (words)1.2, word--; "
        "none = the text as is (default)",
    )
    parser.add_argument(
        "--long-prompts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encode prompts past 77 tokens in windows instead of truncating them (default: on)",
    )
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                        help="apply a LoRA (a .safetensors file, or a name in --lora-dir) with a weight (default 1); "
                             "repeat for several")
    parser.add_argument("--lora-dir", default=None, metavar="DIR",
                        help="folder of LoRA files, for --lora NAME and <lora:NAME:WEIGHT> prompt tags "
                             "(with --prompt-syntax a1111)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto = float16 on GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: auto)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--fast", action="store_true",
        help="the fast path (pipe.optimize()): fused attention projections, channels_last convolutions, attention "
        "kernels timed per shape and CUDA-graph replay of the UNet step on a CUDA GPU, and a bfloat16 VAE decode "
        "instead of the float32 upcast of a float16 VAE; same images up to float rounding (see the README)",
    )


def _add_refiner_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refiner", default=None, metavar="MODEL",
                        help="a refiner checkpoint (folder or hub id): the base stops at --refiner-start and the "
                        "refiner denoises the rest (the ensemble of experts)")
    parser.add_argument("--refiner-start", type=float, default=0.8,
                        help="fraction of the schedule after which the refiner takes over, in (0, 1) (default: 0.8)")


def _add_hires_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hires-scale", type=float, default=None, metavar="S",
                        help="hires fix: upscale the image by S (e.g. 1.5) and redraw it (default: off)")
    parser.add_argument("--hires-strength", type=float, default=0.7,
                        help="hires fix: denoising strength of the redraw, in (0, 1] (default: 0.7)")
    parser.add_argument("--hires-steps", type=int, default=0,
                        help="hires fix: steps of the redraw (default: 0, the same as --steps)")
    parser.add_argument("--hires-upscaler", default="Latent",
                        help="hires fix: Latent, 'Latent (antialiased)', 'Latent (bicubic)', 'Latent (bicubic "
                        "antialiased)', 'Latent (nearest)', 'Latent (nearest-exact)', Lanczos or Nearest "
                        "(default: Latent)")
    parser.add_argument(
        "--hires-refiner-pass",
        choices=HIRES_REFINER_PASSES,
        default=DEFAULT_HIRES_REFINER_PASS,
        help="hires fix with --refiner: the pass(es) the refiner takes over at --refiner-start, as AUTOMATIC1111's "
        "option (default: 'second pass')",
    )
    parser.add_argument("--subseed", type=int, default=None,
                        help="variation seed: mixed into the seed's noise by --subseed-strength (default: random)")
    parser.add_argument("--subseed-strength", type=float, default=0.0,
                        help="how far towards the variation seed's noise, in [0, 1] (default: 0, off)")


def _output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--output {output!r} must end in .png (images are saved as PNG with their parameters)")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def params_from_args(args: argparse.Namespace) -> GenerationParams:
    """The command line as a GenerationParams (the seed already drawn when --seed is not given)."""
    params = GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative,
        prompt_2=args.prompt_2,
        steps=args.steps,
        sampler=find_sampler(args.scheduler).name if args.scheduler else None,
        guidance_scale=args.guidance,
        seed=args.seed if args.seed is not None else random.randrange(2**32),
        width=getattr(args, "width", None),
        height=getattr(args, "height", None),
        model=args.model,
        batch_size=args.num_images,
        prompt_syntax=None if args.prompt_syntax == "none" else args.prompt_syntax,
        long_prompts=args.long_prompts,
        denoising_strength=getattr(args, "strength", None),
        mask_blur=getattr(args, "mask_blur", None),
        padding_mask_crop=getattr(args, "padding_mask_crop", None),
        refiner=args.refiner or "",
        refiner_switch_at=args.refiner_start if args.refiner else None,
        loras=tuple(parse_lora_flag(value) for value in args.lora),
    )
    return replace(params, **_sampling_fields(args))


def _sampling_fields(args: argparse.Namespace) -> dict:
    """--schedule, and for `generate` the hires-fix and variation-seed flags, as GenerationParams fields."""
    fields = {"schedule": find_schedule(args.schedule).label if args.schedule else None}
    hires = getattr(args, "hires_scale", None)
    if hires is not None:
        fields.update(hires_scale=hires, hires_upscaler=find_upscaler(args.hires_upscaler).name,
                      hires_steps=args.hires_steps, denoising_strength=args.hires_strength,
                      hires_refiner_pass=args.hires_refiner_pass)
    if getattr(args, "subseed_strength", 0.0):
        fields.update(subseed=args.subseed, subseed_strength=args.subseed_strength)
    return fields


def parse_lora_flag(value: str) -> tuple[str, float]:
    """`--lora FILE[:WEIGHT]` -> (FILE, WEIGHT); a trailing `:number` is the weight (default 1.0)."""
    head, sep, tail = value.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return value, 1.0


def _check_files(args: argparse.Namespace) -> None:
    for flag in ("image", "mask"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path}: no such file")


def run(args: argparse.Namespace) -> int:
    """`generate`, `img2img` and `inpaint`: one base call, and with --refiner a refiner call on its latents."""
    from sdxl.generation import check_params, mode_of

    params = params_from_args(args)
    try:
        check_params(params, {"generate": "txt2img"}.get(args.command, args.command))
    except ValueError as err:  # name the flag, not the field
        raise UsageError(_flag_names(str(err), hires=params.hires_scale is not None)) from None
    _check_files(args)
    paths = _output_paths(args.output, args.num_images)
    if not paths[0].parent.exists():
        raise UsageError(f"the folder for --output does not exist: {paths[0].parent}")

    from sdxl.metadata import save_png
    from sdxl.runner import Runner
    from sdxl.utils import load_image

    device = resolve_device(args.device)
    runner = Runner(device, resolve_dtype(args.dtype, device), quiet=args.quiet, lora_dir=args.lora_dir,
                    fast=args.fast)
    image = load_image(args.image) if getattr(args, "image", None) else None
    mask = load_image(args.mask) if getattr(args, "mask", None) else None
    mode_of(image, mask)
    results = runner.run(params, image=image, mask=mask)
    for result, path in zip(results, paths):
        shown = GenerationParams(**{**result.params.__dict__, "model": _display_name(args.model),
                                    "refiner": _display_name(args.refiner) if args.refiner else ""})
        save_png(result.image, path, shown)
        print(f"saved {path} (seed {result.params.seed})")
    return 0


# field names in runner errors -> the flags that set them
_FLAGS = {
    "steps": "--steps", "batch_size": "--num-images", "width": "--width", "height": "--height",
    "denoising_strength": "--strength", "refiner_switch_at": "--refiner-start", "mask_blur": "--mask-blur",
    "padding_mask_crop": "--padding-mask-crop", "a refiner": "--refiner", "hires_scale": "--hires-scale",
    "hires_steps": "--hires-steps", "subseed_strength": "--subseed-strength", "subseed": "--subseed",
    "hires_refiner_pass": "--hires-refiner-pass",
}


def _flag_names(message: str, hires: bool = False) -> str:
    flags = {**_FLAGS, "denoising_strength": "--hires-strength"} if hires else _FLAGS
    for field, flag in flags.items():
        if message.startswith(field + " ") or f" {field} " in message:
            message = message.replace(field, flag, 1)
    return message


def _display_name(model: str) -> str:
    return Path(model).name if os.path.isdir(model) else model
