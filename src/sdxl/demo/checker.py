"""A programmatic adherence checker for demo images: background colour, shape colour, shape class and position.

- background: the named colour nearest to the median of the 2-pixel border;
- shape colour: the named colour nearest to the median of the pixels far from the background colour;
- shape mask: pixels nearer the shape colour than the background colour;
- shape class: the shape whose template, fitted to the mask's bounding box, has the highest IoU with the mask;
- position: the offset of the mask's bounding-box centre from the image centre: "center" within CENTER_RADIUS,
  else its quadrant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sdxl.demo.shapes import COLOURS, SHAPES, coverage

_NAMES = list(COLOURS)
_RGB = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # (8, 3)
FAR_FROM_BACKGROUND = 60.0  # RGB distance of a first-pass shape pixel
CENTER_RADIUS = 0.12  # fraction of the image: a centroid nearer the centre than this is "center"
MIN_PIXELS = 4


@dataclass(frozen=True)
class Reading:
    """What the checker sees in one image (None: no shape found)."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour nearest (Euclidean RGB) to `rgb`."""
    return _NAMES[int(np.argmin(((_RGB - rgb) ** 2).sum(-1)))]


def _classify_shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = float(x1 - x0), float(y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = mask.shape[0]
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = coverage(shape, cx, cy, w, h, size) >= 0.5
        iou = (template & mask).sum() / max((template | mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _position(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]
    # the bounding box's centre (a triangle's centroid sits low in its box)
    dx, dy = (xs.min() + xs.max() + 1) / (2 * size) - 0.5, (ys.min() + ys.max() + 1) / (2 * size) - 0.5
    if max(abs(dx), abs(dy)) < CENTER_RADIUS:
        return "center"
    return ("top" if dy < 0 else "bottom") + " " + ("left" if dx < 0 else "right")


def read_image(image: np.ndarray) -> Reading:
    """Read one (H, W, 3) uint8 (or 0-255 float) image."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"read_image needs an (H, W, 3) RGB image, got shape {img.shape}")
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])  # fmt: skip
    background = nearest_colour(np.median(border, axis=0))
    bg = np.array(COLOURS[background], dtype=np.float32)
    far = np.sqrt(((img - bg) ** 2).sum(-1)) > FAR_FROM_BACKGROUND
    if far.sum() < MIN_PIXELS:
        return Reading(background, None, None, None)
    colour = nearest_colour(np.median(img[far], axis=0))
    fg = np.array(COLOURS[colour], dtype=np.float32)
    if colour == background:
        return Reading(background, colour, None, None)
    mask = ((img - fg) ** 2).sum(-1) < ((img - bg) ** 2).sum(-1)
    if mask.sum() < MIN_PIXELS:
        return Reading(background, colour, None, None)
    return Reading(background, colour, _classify_shape(mask), _position(mask))
