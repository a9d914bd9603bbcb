"""The `sdxl` command: generate images from the terminal, with A1111-readable PNG metadata.

Uses only the public `sdxl` API. Each subcommand lives in a module of this package with an `add_parsers(sub)` that
registers it; `COMMANDS` maps its name to the function that runs it. Errors we expect (bad input, missing files) are
printed as one line that says what to do, without a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sdxl.cli import checkpoints, generate, serve
from sdxl.cli.common import UsageError

EPILOG = """examples:
  sdxl generate "a red circle on a blue background" --model demo -o out.png
  sdxl generate "an astronaut in a jungle" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --steps 30 --scheduler "DPM++ 2M Karras" --seed 42 -o astronaut.png
  sdxl generate "a lion" --model stabilityai/stable-diffusion-xl-base-1.0 \\
      --refiner stabilityai/stable-diffusion-xl-refiner-1.0 --refiner-start 0.8 -o lion.png
  sdxl img2img "a watercolour painting" --image photo.png --strength 0.5 --model demo -o painted.png
  sdxl inpaint "a tiger" --image dog.png --mask mask.png --model demo -o tiger.png
  sdxl serve --model demo        # then open http://127.0.0.1:7860
"""

COMMANDS = {
    "generate": generate.run,
    "img2img": generate.run,
    "inpaint": generate.run,
    "tiny-checkpoint": checkpoints.tiny_checkpoint,
    "schedulers": checkpoints.schedulers,
    "info": checkpoints.info,
    "convert": checkpoints.convert,
    "serve": serve.run,
}

# subcommands whose whole command line belongs to another module's own argument parser
DEMO_TOOLS = {"train-demo": "sdxl.demo.train", "eval-demo": "sdxl.demo.evaluate", "demo-grid": "sdxl.demo.grid"}


def build_parser() -> argparse.ArgumentParser:
    """The `sdxl` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sdxl",
        description="Stable Diffusion XL inference: text-to-image, image-to-image and inpainting with "
        "diffusers-compatible checkpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    generate.add_parsers(sub)
    checkpoints.add_parsers(sub)
    serve.add_parsers(sub)
    # listed for --help; their arguments go to sdxl.demo.train / sdxl.demo.evaluate (see DEMO_TOOLS)
    sub.add_parser("train-demo", help="train the tiny demo model from scratch (`sdxl train-demo --help`)",
                   add_help=False)
    sub.add_parser("eval-demo", help="measure a demo model's prompt adherence (`sdxl eval-demo --help`)",
                   add_help=False)
    sub.add_parser("demo-grid", help="a labelled grid of demo-model images (`sdxl demo-grid --help`)",
                   add_help=False)
    return parser


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
