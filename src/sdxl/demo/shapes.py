"""The demo's procedural captioned image set: one coloured shape on a plain background, generated from a seed.

A scene is (colour, shape, background, size, position); it is rendered with 4x supersampling at any resolution, so
the same scene can be drawn sharp, or small and upscaled (blurry), and cropped. Sample `i` of seed `s` is a pure
function of `(s, i)` (numpy's PCG64 seeded with both), so a data stream is reproducible and needs no storage.

Micro-conditioning is real: `original_size` is the resolution the scene was rendered at before being resized to
the training canvas (below the canvas size: upscaled, hence blurry), and `crops_coords_top_left` is the offset of
the training crop inside a larger canvas.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Eight well-separated named colours (RGB 0-255): used for shapes and backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 225, 30),
    "orange": (250, 135, 10),
    "purple": (130, 40, 170),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "medium", "large")
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")
# Diameter (bounding-box side) range of each size class, as a fraction of the canvas. Even a small shape spans
# >= 3 latent pixels (8x downsampling): smaller ones come back from the tiny VAE as blobs of no readable shape.
SIZE_RANGE = {"small": (0.40, 0.46), "medium": (0.48, 0.54), "large": (0.62, 0.72)}
MARGIN = 0.05  # a corner shape's box keeps this gap (fraction of the canvas) to the edges, plus jitter
POSITION_WORDS = {
    "center": "in the center",
    "top left": "in the top left corner",
    "top right": "in the top right corner",
    "bottom left": "in the bottom left corner",
    "bottom right": "in the bottom right corner",
}
SIZE_WORDS = {"small": "small", "medium": "", "large": "large"}
# Caption templates; {size} may be empty (medium, or a template without a size word).
TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a {size} {colour} {shape} on a {background} background",
    "a {colour} {shape} {position} on a {background} background",
    "a {size} {colour} {shape} {position} on a {background} background",
    "a {background} background with a {colour} {shape}",
    "a {size} {colour} {shape} {position}, {background} background",
)
HELDOUT_SEED = 20240  # fixed: the held-out set is part of the dataset's definition, not of a training run
HELDOUT_COUNT = 40


@dataclass(frozen=True)
class Scene:
    """One image's content. cx, cy, diameter: fractions of the canvas; diameter is the shape's box side."""

    colour: str
    shape: str
    background: str
    size: str
    position: str
    cx: float
    cy: float
    diameter: float


def all_triples() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) with colour != background, in a fixed order."""
    return [(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, COLOURS) if c != b]


def heldout_triples() -> list[tuple[str, str, str]]:
    """Combinations never rendered in training: every colour, shape and background (and every pair of them)
    still appears in training, only these triples are new."""
    rng = np.random.default_rng(HELDOUT_SEED)
    triples = all_triples()
    order = rng.permutation(len(triples))
    pair_count: dict[tuple, int] = {}
    for c, s, b in triples:
        for key in (("cs", c, s), ("cb", c, b), ("sb", s, b)):
            pair_count[key] = pair_count.get(key, 0) + 1
    held: list[tuple[str, str, str]] = []
    for i in order:
        c, s, b = triples[i]
        keys = (("cs", c, s), ("cb", c, b), ("sb", s, b))
        if all(pair_count[k] > 2 for k in keys):  # keep at least 2 training triples per pair
            held.append(triples[i])
            for k in keys:
                pair_count[k] -= 1
        if len(held) == HELDOUT_COUNT:
            break
    return sorted(held)


def training_triples() -> list[tuple[str, str, str]]:
    """All triples minus the held-out ones."""
    held = set(heldout_triples())
    return [t for t in all_triples() if t not in held]


def sample_scene(rng: np.random.Generator, triple: tuple[str, str, str], position: str | None = None,
                 size: str | None = None) -> Scene:  # fmt: skip
    """Random size/position (unless given) for one triple. Corner shapes are small or medium."""
    colour, shape, background = triple
    if position is None:
        position = POSITIONS[rng.integers(len(POSITIONS))]
    if size is None:
        sizes = SIZES if position == "center" else SIZES[:2]
        size = sizes[rng.integers(len(sizes))]
    lo, hi = SIZE_RANGE[size]
    d = float(rng.uniform(lo, hi))
    if position == "center":
        cx, cy = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    else:
        r = d / 2 + MARGIN
        cy = r + rng.uniform(0, 0.05) if position.startswith("top") else 1 - r - rng.uniform(0, 0.05)
        cx = r + rng.uniform(0, 0.05) if position.endswith("left") else 1 - r - rng.uniform(0, 0.05)
    return Scene(colour, shape, background, size, position, float(cx), float(cy), d)


def caption(scene: Scene, template: str) -> str:
    """Fill a template with the scene's words (no double spaces when the size word is empty)."""
    text = template.format(
        colour=scene.colour, shape=scene.shape, background=scene.background,
        size=SIZE_WORDS[scene.size], position=POSITION_WORDS[scene.position],
    )  # fmt: skip
    return tidy(text)


def tidy(text: str) -> str:
    """Single spaces, and "an" before a vowel ("a orange star" -> "an orange star")."""
    return re.sub(r"\ba ([aeiou])", r"an \1", " ".join(text.split()))


def random_caption(rng: np.random.Generator, scene: Scene) -> str:
    """A caption from a random template; a template that omits size/position leaves them unconstrained."""
    return caption(scene, TEMPLATES[rng.integers(len(TEMPLATES))])


# ---- rendering ------------------------------------------------------------------------------------------------------


def _star_polygon() -> np.ndarray:
    """A five-pointed star (inner radius 0.45) fitted to the unit box, point up. (10, 2) as (u, v)."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / (hi - lo)


_STAR = _star_polygon()
_TRIANGLE = np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]])


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (u < x_at)
    return inside


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in `shape` fitted to the unit box [0, 1]^2 (v grows downwards)."""
    box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return box
    if shape == "triangle":
        return box & _inside_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return box & _inside_polygon(u, v, _STAR)
    if shape == "cross":
        return box & ((np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6))
    raise ValueError(f"unknown shape {shape!r}; known shapes: {SHAPES}")


def coverage(shape: str, cx: float, cy: float, w: float, h: float, size: int, supersample: int = 4) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the fraction of each pixel covered by `shape` in the box of centre (cx, cy)
    and extent (w, h), all in pixels."""
    n = size * supersample
    grid = (np.arange(n) + 0.5) / supersample  # pixel coordinates of the subsamples
    u = (grid[None, :] - (cx - w / 2)) / w
    v = (grid[:, None] - (cy - h / 2)) / h
    inside = shape_inside(shape, np.broadcast_to(u, (n, n)), np.broadcast_to(v, (n, n)))
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3)).astype(np.float32)


def render(scene: Scene, size: int) -> torch.Tensor:
    """The scene at `size` x `size` pixels: (3, size, size) float32 in [-1, 1]."""
    d = scene.diameter * size
    supersample = max(2, 256 // size)  # >= 256 subsamples across: antialiased edges at every size
    alpha = coverage(scene.shape, scene.cx * size, scene.cy * size, d, d, size, supersample)
    alpha = torch.from_numpy(alpha)[None]
    fg = torch.tensor(COLOURS[scene.colour], dtype=torch.float32)[:, None, None] / 127.5 - 1
    bg = torch.tensor(COLOURS[scene.background], dtype=torch.float32)[:, None, None] / 127.5 - 1
    return alpha * fg + (1 - alpha) * bg


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): antialiased area downscale or bilinear upscale."""
    if image.shape[-1] == size:
        return image
    mode = "area" if image.shape[-1] > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(image[None], size=(size, size), mode=mode, **kwargs)[0]


# ---- training samples -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Micro-conditioning augmentation probabilities and ranges (pixels at the training resolution)."""

    p_lowres: float = 0.3  # render small (original_size < canvas) and upscale: blurry
    min_original: int = 24
    p_crop: float = 0.3  # render on a larger canvas and crop the training window out of it
    max_crop: int = 48
    max_original: int = 256  # sharp images say they came from an original of canvas..max_original


@dataclass
class Sample:
    """One training example: image (3, S, S) in [-1, 1], caption, time ids (orig_h, orig_w, top, left)."""

    image: torch.Tensor
    caption: str
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    scene: Scene


def make_sample(seed: int, index: int, image_size: int, triples: list[tuple[str, str, str]],
                augment: Augment = Augment()) -> Sample:  # fmt: skip
    """Sample `index` of the stream `seed`: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, triples[rng.integers(len(triples))])
    text = random_caption(rng, scene)
    canvas, top, left = image_size, 0, 0
    if rng.random() < augment.p_crop:
        canvas = image_size + int(rng.integers(1, augment.max_crop + 1))
        top, left = (int(x) for x in rng.integers(0, canvas - image_size + 1, size=2))
    if rng.random() < augment.p_lowres:
        original = int(rng.integers(min(augment.min_original, canvas - 1), canvas))  # small canvases too
        image = resize(render(scene, original), canvas)
    else:
        original = int(rng.integers(canvas, max(augment.max_original, canvas) + 1))
        image = render(scene, canvas)  # supersampled: the same as an antialiased downscale from `original`
    image = image[:, top : top + image_size, left : left + image_size]
    return Sample(image.contiguous(), text, (original, original), (top, left), scene)


def make_batch(seed: int, start: int, batch_size: int, image_size: int, triples: list[tuple[str, str, str]],
               augment: Augment = Augment()) -> tuple[torch.Tensor, list[str], torch.Tensor]:  # fmt: skip
    """Samples start..start+batch_size-1: images (B, 3, S, S), captions, micro-conditioning (B, 4) float32."""
    samples = [make_sample(seed, start + i, image_size, triples, augment) for i in range(batch_size)]
    images = torch.stack([s.image for s in samples])
    micro = torch.tensor([[*s.original_size, *s.crop_top_left] for s in samples], dtype=torch.float32)
    return images, [s.caption for s in samples], micro
