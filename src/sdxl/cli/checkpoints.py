"""`sdxl tiny-checkpoint`, `sdxl schedulers`, `sdxl info` and `sdxl convert`: the checkpoint tools."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdxl.cli.common import DTYPES, UsageError
from sdxl.params import SAMPLERS, SCHEDULE_TYPES, UPSCALERS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the checkpoint subcommands."""
    tiny = sub.add_parser(
        "tiny-checkpoint",
        help="write a tiny random-weight SDXL checkpoint (diffusers layout) to try the command offline",
        description="Write a tiny SDXL-architecture checkpoint with random weights. Its images are noise-like: it "
        "exists to run the whole pipeline on a machine without the real weights.",
    )
    tiny.add_argument("folder", help="where to write it")
    tiny.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    tiny.add_argument("--refiner", action="store_true", help="write a tiny refiner (img2img, aesthetic score) instead")

    sub.add_parser("schedulers", help="list the sampler names --scheduler accepts, the schedule types and upscalers")

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


def tiny_checkpoint(args: argparse.Namespace) -> int:
    """`sdxl tiny-checkpoint FOLDER`."""
    from sdxl.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(args.folder, seed=args.seed, refiner=args.refiner)
    if args.refiner:
        print(f"wrote a tiny random-weight SDXL refiner to {folder}")
        return 0
    print(f"wrote a tiny random-weight SDXL checkpoint to {folder}")
    print(f'try: sdxl generate "a red circle on a blue background" --model {folder} -o out.png')
    return 0


def schedulers(args: argparse.Namespace) -> int:
    """`sdxl schedulers`: the sampler names and the scheduler each one builds."""
    for sampler in SAMPLERS.values():
        options = ", ".join(f"{k}={v}" for k, v in sampler.options.items())
        print(f"{sampler.name:<20} {sampler.scheduler}" + (f" ({options})" if options else ""))
    print("\nschedule types (--schedule, k-diffusion samplers): " + ", ".join(s.label for s in SCHEDULE_TYPES))
    print("hires upscalers (--hires-upscaler): " + ", ".join(u.name for u in UPSCALERS))
    return 0


def info(args: argparse.Namespace) -> int:
    """`sdxl info PATH`."""
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


def convert(args: argparse.Namespace) -> int:
    """`sdxl convert IN OUT`: single file <-> diffusers folder."""
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
