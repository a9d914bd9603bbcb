"""A labelled grid of demo-model images: one row per shape, one column per colour, each on another background.

    sdxl demo-grid [--model demo] [--out demo-grid.png] [--steps 30] [--seed 0]

Cell (row r, column c) is "a {colour c} {shape r} on a {background} background", the background being the colour
r + c + 1 places further in the list (never the shape's own colour), generated with seed `--seed` + the cell index
by our StableDiffusionXLPipeline at its defaults. Some of the 40 combinations are held out of training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from sdxl.demo.evaluate import generate
from sdxl.demo.shapes import COLOURS, SHAPES, tidy

LABEL = 18  # pixels of the label strips above and left of the images (at least the default font's height)


def grid_prompts() -> list[list[str]]:
    """The prompts, row by row (SHAPES) and column by column (COLOURS)."""
    names = list(COLOURS)
    rows = []
    for r, shape in enumerate(SHAPES):
        row = []
        for c, colour in enumerate(names):
            background = names[(c + r + 1) % len(names)]
            row.append(tidy(f"a {colour} {shape} on a {background} background"))
        rows.append(row)
    return rows


def make_grid(model: str = "demo", steps: int = 30, seed: int = 0, device: str = "cpu") -> Image.Image:
    """Generate every cell and lay them out with the colour names on top and the shape names on the left."""
    items = [{"prompt": p, "seed": seed + i} for i, p in enumerate(p for row in grid_prompts() for p in row)]
    images = generate(model, items, steps, batch=len(items), device=device)  # one batch
    rows, columns = len(SHAPES), len(COLOURS)
    h, w = images[0].shape[:2]
    left = 6 * LABEL  # room for "triangle"
    canvas = Image.new("RGB", (left + columns * w, LABEL + rows * h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, colour in enumerate(COLOURS):
        draw.text((left + c * w + 4, 2), colour, fill="black")
    for r, shape in enumerate(SHAPES):
        draw.text((4, LABEL + r * h + h // 2 - 6), shape, fill="black")
        for c in range(columns):
            canvas.paste(Image.fromarray(images[r * columns + c]), (left + c * w, LABEL + r * h))
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdxl demo-grid", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", help="the demo model (default: the shipped one)")
    parser.add_argument("--out", default="demo-grid.png", help="where to write the PNG (default demo-grid.png)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first cell; cell i uses seed + i")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be a positive number of denoising steps, got {args.steps}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(args.model, args.steps, args.seed, args.device).save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
