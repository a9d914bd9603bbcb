"""Prompt adherence of a demo model on held-out colour/shape/background combinations.

    python -m sdxl.demo.evaluate --model DIR [--n 200] [--steps 30] [--json out.json] [--grid grid.png]

Prompt i names held-out triple i mod 40 and position (i // 40) mod 5 ("a red star in the top left corner on a blue
background"), generated with seed i by our StableDiffusionXLPipeline at its defaults (size, guidance, scheduler);
the checker (sdxl.demo.checker) reads colour, background, shape and position back from each image.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdxl.demo.checker import read_image
from sdxl.demo.shapes import POSITION_WORDS, POSITIONS, heldout_triples, tidy

logger = logging.getLogger("sdxl.demo.evaluate")
EVAL_TEMPLATE = "a {colour} {shape} {position} on a {background} background"


def eval_prompts(n: int) -> list[dict[str, Any]]:
    """The n evaluation items: prompt, expected attributes and seed."""
    if n <= 0:
        raise ValueError(f"--n must be a positive number of prompts, got {n}")
    held = heldout_triples()
    items = []
    for i in range(n):
        colour, shape, background = held[i % len(held)]
        position = POSITIONS[(i // len(held)) % len(POSITIONS)]
        prompt = tidy(EVAL_TEMPLATE.format(colour=colour, shape=shape, background=background,
                                           position=POSITION_WORDS[position]))  # fmt: skip
        expected = {"colour": colour, "shape": shape, "background": background, "position": position}
        items.append({"prompt": prompt, "expected": expected, "seed": i})
    return items


def score(items: list[dict[str, Any]], images: list[np.ndarray]) -> dict[str, Any]:
    """Accuracy per attribute of `images` (uint8 (H, W, 3)) against the items' expectations."""
    keys = ("colour", "background", "shape", "position")
    hits = dict.fromkeys(keys, 0)
    for item, image in zip(items, images, strict=True):
        reading = read_image(image).to_dict()
        item["read"] = reading
        for k in keys:
            hits[k] += reading[k] == item["expected"][k]
    return {k: hits[k] / len(items) for k in keys}


def generate(model: str, items: list[dict[str, Any]], steps: int, batch: int, device: str) -> list[np.ndarray]:
    """One image per item with our pipeline (defaults except the step count), as uint8 arrays."""
    import torch

    from sdxl import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        gens = [torch.Generator().manual_seed(it["seed"]) for it in chunk]
        images = pipe([it["prompt"] for it in chunk], num_inference_steps=steps, generator=gens, output_type="np")
        out += [(im * 255).round().astype(np.uint8) for im in images.images]
    return out


def save_grid(images: list[np.ndarray], path: str | Path, columns: int = 10) -> None:
    """The images tiled in rows of `columns` (a quick look at what the checker read)."""
    from PIL import Image

    rows = -(-len(images) // columns)
    h, w, _ = images[0].shape
    grid = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    Image.fromarray(grid).save(path)


def evaluate(model: str, n: int = 200, steps: int = 30, batch: int = 50, device: str = "cpu") -> dict[str, Any]:
    """Generate and score n held-out prompts; returns {"accuracy": ..., "items": ..., settings}."""
    items = eval_prompts(n)
    t0 = time.perf_counter()
    images = generate(model, items, steps, batch, device)
    accuracy = score(items, images)
    return {"model": str(model), "n": n, "steps": steps, "accuracy": accuracy,
            "seconds": time.perf_counter() - t0, "items": items, "images": images}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl.demo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a demo model folder (e.g. DIR/base from sdxl.demo.train)")
    parser.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--json", default=None, help="where to write the results (default MODEL/eval.json when MODEL is a folder)"
    )
    parser.add_argument("--grid", default=None, help="also save the images as one PNG grid here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = evaluate(args.model, args.n, args.steps, args.batch, args.device)
    images = result.pop("images")
    if args.grid:
        save_grid(images, args.grid)
    # default: beside the weights of a model folder; an alias ("demo") names package data, left untouched
    path = Path(args.json) if args.json else Path(args.model) / "eval.json" if Path(args.model).is_dir() else None
    if path is not None:
        path.write_text(json.dumps(result, indent=1) + "\n")
    acc = result["accuracy"]
    print(
        " ".join(f"{k} {v:.1%}" for k, v in acc.items())
        + f"  ({args.n} held-out prompts{f', {path}' if path else ''})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
