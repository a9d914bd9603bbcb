"""The `sdxl` command: generate images from the terminal, with A1111-readable PNG metadata.

Uses only the public `sdxl` API. Errors we expect (bad input, missing files) are printed as one line that says what
to do, without a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path

from sdxl.params import SAMPLERS, GenerationParams, find_sampler

DTYPES = ("auto", "float32", "float16", "bfloat16")

EPILOG = """examples:
  sdxl tiny-checkpoint ./tiny-sdxl
  sdxl generate "a red circle on a blue background" --model ./tiny-sdxl -o out.png
  sdxl generate "an astronaut in a jungle" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --steps 30 --scheduler "DPM++ 2M Karras" --seed 42 -o astronaut.png
  sdxl generate "a lion" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --refiner stabilityai/stable-diffusion-xl-refiner-1.0 --refiner-start 0.8 -o lion.png
  sdxl img2img "a watercolour painting" --image photo.png --strength 0.5 --model ./tiny-sdxl -o painted.png
  sdxl inpaint "a tiger" --image dog.png --mask mask.png --model ./tiny-sdxl -o tiger.png
"""


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (reported like argparse's own errors)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdxl",
        description="Stable Diffusion XL inference: text-to-image, image-to-image and inpainting with "
        "diffusers-compatible checkpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate images from a text prompt",
        description="Generate images from a text prompt and save them as PNG (with A1111 `parameters` metadata).",
    )
    _add_generation_flags(gen, size=True)
    _add_refiner_flags(gen)

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

    tiny = sub.add_parser(
        "tiny-checkpoint",
        help="write a tiny random-weight SDXL checkpoint (diffusers layout) to try the command offline",
        description="Write a tiny SDXL-architecture checkpoint with random weights. Its images are noise-like: it "
        "exists to run the whole pipeline on a machine without the real weights.",
    )
    tiny.add_argument("folder", help="where to write it")
    tiny.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    tiny.add_argument("--refiner", action="store_true", help="write a tiny refiner (img2img, aesthetic score) instead")

    sub.add_parser("schedulers", help="list the sampler names --scheduler accepts")
    # listed for --help; their arguments go to sdxl.demo.train / sdxl.demo.evaluate (see DEMO_TOOLS)
    sub.add_parser("train-demo", help="train the tiny demo model from scratch (`sdxl train-demo --help`)",
                   add_help=False)
    sub.add_parser("eval-demo", help="measure a demo model's prompt adherence (`sdxl eval-demo --help`)",
                   add_help=False)
    sub.add_parser("demo-grid", help="a labelled grid of demo-model images (`sdxl demo-grid --help`)",
                   add_help=False)

    info = sub.add_parser(
        "info",
        help="describe a checkpoint: kind, layout, dtype, parameter counts",
        description="Describe an SDXL checkpoint (a single .safetensors file or a diffusers folder): base, refiner "
        "or inpaint, dtypes, parameters per component, whether it has text encoders and a VAE. Also checks the "
        "weights for NaN/Inf values.",
    )
    info.add_argument("path", help="a .safetensors file (original layout) or a diffusers-layout folder")
    info.add_argument("--no-value-check", action="store_true", help="skip the NaN/Inf scan (reads headers only)")
    info.add_argument("--allow-pickle", action="store_true", help="read a pickle checkpoint (weights_only=True)")

    convert = sub.add_parser(
        "convert",
        help="convert between a single .safetensors file and a diffusers folder",
        description="IN a single file (original Stability layout) -> OUT a diffusers folder, or IN a diffusers "
        "folder -> OUT a single .safetensors file.",
    )
    convert.add_argument("input", metavar="IN", help="a .safetensors (or, with --allow-pickle, .ckpt) file or a folder")
    convert.add_argument("output", metavar="OUT", help="the folder or .safetensors file to write")
    convert.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype to write (auto: keep fp32)")
    convert.add_argument("--config", default=None, help="a diffusers folder with the configs of a non-SDXL-sized file")
    convert.add_argument("--variant", default=None, help="write `*.VARIANT.safetensors` files (e.g. fp16)")
    convert.add_argument("--allow-pickle", action="store_true", help="read a pickle checkpoint (weights_only=True)")
    return parser


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
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto = float16 on GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: auto)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_refiner_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refiner", default=None, metavar="MODEL",
                        help="a refiner checkpoint (folder or hub id): the base stops at --refiner-start and the "
                        "refiner denoises the rest (the ensemble of experts)")
    parser.add_argument("--refiner-start", type=float, default=0.8,
                        help="fraction of the schedule after which the refiner takes over, in (0, 1) (default: 0.8)")


def _resolve_device(name: str):
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
        raise UsageError(f"--device {name!r} is not a device name ({err}); try cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but no CUDA GPU is available here; use --device cpu")
    return device


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return getattr(torch, name)


def _sampler_name(scheduler) -> str:
    """The A1111 name of a scheduler object, for the metadata (the class name when it has none)."""
    config = scheduler.config
    for sampler in SAMPLERS.values():
        if type(scheduler).__name__ != sampler.scheduler:
            continue
        if all(config.get(k) == v for k, v in sampler.options.items()) and not (
            config.get("use_karras_sigmas") and not sampler.options.get("use_karras_sigmas")
        ):
            return sampler.name
    return type(scheduler).__name__


def _output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--output {output!r} must end in .png (images are saved as PNG with their parameters)")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


# subcommand -> (pipeline class for the base model, class for the refiner stage)
PIPELINES = {
    "generate": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "img2img": ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "inpaint": ("StableDiffusionXLInpaintPipeline", "StableDiffusionXLInpaintPipeline"),
}


def _check_generation_args(args: argparse.Namespace) -> None:
    """Every mistake the command line can show before a model is loaded."""
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1 (got {args.steps})")
    if args.num_images < 1:
        raise UsageError(f"--num-images must be at least 1 (got {args.num_images})")
    for flag in ("width", "height"):
        value = getattr(args, flag, None)
        if value is not None and (value <= 0 or value % 8):
            raise UsageError(f"--{flag} must be a positive multiple of 8 (got {value}); try {max(8, value // 8 * 8)}")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0 <= strength <= 1:
        raise UsageError(f"--strength must be between 0 and 1 (got {strength})")
    if args.refiner is not None and not 0 < args.refiner_start < 1:
        raise UsageError(f"--refiner-start must lie strictly between 0 and 1 (got {args.refiner_start})")
    if getattr(args, "mask_blur", 0) < 0:
        raise UsageError(f"--mask-blur must be 0 or more pixels (got {args.mask_blur})")
    if getattr(args, "padding_mask_crop", None) is not None and args.padding_mask_crop < 0:
        raise UsageError(f"--padding-mask-crop must be 0 or more pixels (got {args.padding_mask_crop})")
    if args.refiner is not None and getattr(args, "padding_mask_crop", None) is not None:
        raise UsageError("--padding-mask-crop cannot be combined with --refiner (the base would hand over the "
                         "latents of the crop only); drop one of them")
    for flag in ("image", "mask"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path}: no such file")


def _load_input_image(path: str):
    from sdxl.utils import load_image

    return load_image(path)


def _generate(args: argparse.Namespace) -> int:
    """`generate`, `img2img` and `inpaint`: one base call, and with --refiner a refiner call on its latents."""
    _check_generation_args(args)
    sampler = find_sampler(args.scheduler) if args.scheduler else None
    paths = _output_paths(args.output, args.num_images)
    if not paths[0].parent.exists():
        raise UsageError(f"the folder for --output does not exist: {paths[0].parent}")

    import torch

    import sdxl

    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    base_class, refiner_class = PIPELINES[args.command]
    pipe = getattr(sdxl, base_class).from_pretrained(args.model, torch_dtype=dtype)
    if sampler is not None:
        scheduler_cls = getattr(sdxl, sampler.scheduler)
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **sampler.options)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=args.quiet)

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(args.num_images)]
    common = dict(
        prompt=args.prompt,
        prompt_2=args.prompt_2,
        negative_prompt=args.negative or None,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.num_images,
        generator=generators,
        prompt_syntax=None if args.prompt_syntax == "none" else args.prompt_syntax,
        long_prompts=args.long_prompts,
    )
    kwargs = dict(common)
    if args.command in ("generate", "inpaint"):
        kwargs.update(width=args.width, height=args.height)
    if args.command in ("img2img", "inpaint"):
        kwargs.update(image=_load_input_image(args.image), strength=args.strength)
    if args.command == "inpaint":
        mask = _load_input_image(args.mask)
        if args.mask_blur:
            mask = pipe.mask_processor.blur(mask, blur_factor=args.mask_blur)
        kwargs.update(mask_image=mask, padding_mask_crop=args.padding_mask_crop)
    if args.refiner is None:
        images = pipe(**kwargs).images
    else:
        latents = pipe(**kwargs, denoising_end=args.refiner_start, output_type="latent").images
        # the refiner shares the base's second text encoder and VAE objects: no second copy in memory
        refiner = getattr(sdxl, refiner_class).from_pretrained(
            args.refiner, text_encoder_2=pipe.text_encoder_2, vae=pipe.vae, torch_dtype=dtype
        )
        refiner.scheduler = pipe.scheduler
        refiner.to(device)
        refiner.set_progress_bar_config(disable=args.quiet)
        refine = dict(common, prompt_2=None, image=latents, denoising_start=args.refiner_start)
        if args.command == "inpaint":
            # as diffusers' guide: the inpainting refiner takes the base's latents as `image`, and the mask again
            refine.update(mask_image=kwargs["mask_image"], width=args.width, height=args.height)
        images = refiner(**refine).images

    from sdxl.metadata import save_png

    model_name = _display_name(args.model)
    sampler_name = _sampler_name(pipe.scheduler)
    for i, (image, path) in enumerate(zip(images, paths)):
        params = GenerationParams(
            prompt=args.prompt,
            negative_prompt=args.negative,
            prompt_2=args.prompt_2,
            steps=args.steps,
            sampler=sampler_name,
            guidance_scale=args.guidance,
            seed=seed + i,
            width=image.width,
            height=image.height,
            model=model_name,
            denoising_strength=getattr(args, "strength", None),
            mask_blur=getattr(args, "mask_blur", None),
            refiner=_display_name(args.refiner) if args.refiner else "",
            refiner_switch_at=args.refiner_start if args.refiner else None,
        )
        save_png(image, path, params)
        print(f"saved {path} (seed {seed + i})")
    return 0


def _display_name(model: str) -> str:
    return Path(model).name if os.path.isdir(model) else model


def _tiny_checkpoint(args: argparse.Namespace) -> int:
    from sdxl.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(args.folder, seed=args.seed, refiner=args.refiner)
    if args.refiner:
        print(f"wrote a tiny random-weight SDXL refiner to {folder}")
        return 0
    print(f"wrote a tiny random-weight SDXL checkpoint to {folder}")
    print(f'try: sdxl generate "a red circle on a blue background" --model {folder} -o out.png')
    return 0


def _schedulers(args: argparse.Namespace) -> int:
    for sampler in SAMPLERS.values():
        options = ", ".join(f"{k}={v}" for k, v in sampler.options.items())
        print(f"{sampler.name:<20} {sampler.scheduler}" + (f" ({options})" if options else ""))
    return 0


def _info(args: argparse.Namespace) -> int:
    from sdxl.loading.inspect import describe

    summary = describe(args.path, check_values=not args.no_value_check, allow_pickle=args.allow_pickle)
    print(f"{args.path}: SDXL {summary['kind']} ({summary['layout']})")
    print("dtype: " + ", ".join(f"{d} ({n} tensors)" for d, n in summary["dtypes"].items()))
    for name, count in summary["parameters"].items():
        print(f"  {name:<15} {count:>15,} parameters")
    print(f"  {'total':<15} {summary['total_parameters']:>15,} parameters")
    print(f"text encoders: {'yes' if summary['has_text_encoders'] else 'no'}; VAE: {'yes' if summary['has_vae'] else 'no'}")
    if not args.no_value_check:
        print("values: no NaN or Inf")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from sdxl.loading.diffusers import load_pipeline_components
    from sdxl.loading.save import save_pretrained, save_single_file
    from sdxl.loading.single_file import load_single_file_components

    src, dst = Path(args.input), Path(args.output)
    dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
    if not src.exists():
        raise FileNotFoundError(f"IN {src} does not exist")
    if src.is_dir():
        if dst.suffix != ".safetensors":
            raise UsageError(f"converting the folder {src} writes one file: OUT must end in .safetensors (got {dst})")
        if dst.exists():
            raise FileExistsError(f"OUT {dst} exists; remove it or choose another name")
        components, _ = load_pipeline_components(src, torch_dtype=dtype)
        save_single_file(components, dst)
    else:
        if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
            raise FileExistsError(f"OUT {dst} exists and is not an empty folder; choose a new folder name")
        components, info = load_single_file_components(
            src, torch_dtype=dtype, config=args.config, allow_pickle=args.allow_pickle
        )
        # model_index.json as diffusers writes it: the refiner is an img2img pipeline with the aesthetic-score option
        class_name = "StableDiffusionXLImg2ImgPipeline" if info["kind"] == "refiner" else "StableDiffusionXLPipeline"
        options = info["options"]
        save_pretrained(components, dst, class_name=class_name, options=options, variant=args.variant)
    print(f"wrote {dst}")
    return 0


COMMANDS = {
    "generate": _generate,
    "img2img": _generate,
    "inpaint": _generate,
    "tiny-checkpoint": _tiny_checkpoint,
    "schedulers": _schedulers,
    "info": _info,
    "convert": _convert,
}


# subcommands whose whole command line belongs to another module's own argument parser
DEMO_TOOLS = {"train-demo": "sdxl.demo.train", "eval-demo": "sdxl.demo.evaluate", "demo-grid": "sdxl.demo.grid"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sdxl` command; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DEMO_TOOLS:
        import importlib

        return importlib.import_module(DEMO_TOOLS[argv[0]]).main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="sdxl: %(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as err:
        if args.debug:
            raise
        print(f"sdxl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdxl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
