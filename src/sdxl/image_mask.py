"""Inpainting masks and the geometry of `padding_mask_crop`, as diffusers' `VaeImageProcessor` does them.

- `binarize`: mask values < 0.5 -> 0, >= 0.5 -> 1 (after the resize, so LANCZOS ringing is thresholded away).
- `blur`: a Gaussian blur of a PIL mask (soft edges), `pipe.mask_processor.blur(mask, blur_factor=33)`.
- `get_crop_region`: the box around the white (masked) pixels, padded and grown to the processing aspect ratio;
  the pipeline inpaints only that box, at full resolution, and `apply_overlay` pastes the result back over the
  original image, keeping the original pixels outside the mask.
- `resize_pil`: the three resize modes ("default", "fill", "crop") for PIL images.
- `mask_latents` / `masked_image`: the mask at latent size (nearest) and the image with the masked part zeroed.

PIL is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import PIL.Image

RESIZE_MODES = ("default", "fill", "crop")


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """Values < 0.5 -> 0 and >= 0.5 -> 1, in place (as diffusers), in the mask's own dtype."""
    mask[mask < 0.5] = 0
    mask[mask >= 0.5] = 1
    return mask


def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
    """Gaussian blur with radius `blur_factor` (PIL's GaussianBlur), for soft mask edges."""
    from PIL import Image, ImageFilter

    if not isinstance(image, Image.Image):
        raise TypeError(f"`blur` takes a PIL image (the mask), but got {type(image).__name__}.")
    return image.filter(ImageFilter.GaussianBlur(blur_factor))


def _margin(nonzero: np.ndarray) -> tuple[int, int]:
    """Counts of all-zero lines before the first and after the last line that has a masked pixel."""
    (hits,) = np.nonzero(nonzero)
    return int(hits[0]), int(len(nonzero) - 1 - hits[-1])


def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the smallest box holding every non-zero pixel of `mask_image`, grown by `pad` pixels on
    each side (inside the image), then widened or heightened about its centre to the aspect ratio `width / height`
    (shifted back inside the image where it would leave it)."""
    mask = np.array(mask_image.convert("L"))
    h, w = mask.shape
    if not mask.any():
        raise ValueError(
            "`padding_mask_crop` needs a mask with at least one white (masked) pixel, but `mask_image` is all black: "
            "pass a mask that marks the area to repaint, or leave padding_mask_crop as None."
        )
    left, right = _margin(mask.any(axis=0))
    top, bottom = _margin(mask.any(axis=1))

    # 1. padded bounding box, clipped to the image
    x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
    x2, y2 = int(min(w - right + pad, w)), int(min(h - bottom + pad, h))

    # 2. grow the short side to the processing aspect ratio; keep the box inside the image
    target_ratio = width / height
    if (x2 - x1) / (y2 - y1) > target_ratio:
        grow = int((x2 - x1) / target_ratio - (y2 - y1))
        y1, y2 = _grow_inside(y1 - grow // 2, y2 + grow - grow // 2, mask_image.height)
    else:
        grow = int((y2 - y1) * target_ratio - (x2 - x1))
        x1, x2 = _grow_inside(x1 - grow // 2, x2 + grow - grow // 2, mask_image.width)
    return x1, y1, x2, y2


def _grow_inside(lo: int, hi: int, size: int) -> tuple[int, int]:
    """Shift [lo, hi) back inside [0, size), then clip hi (diffusers' order of corrections)."""
    if hi >= size:
        lo, hi = lo - (hi - size), size
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, size)


def _resize_and_fill(image: PIL.Image.Image, width: int, height: int, resample: int) -> PIL.Image.Image:
    """Fit inside (width, height) keeping the aspect ratio, centred; the empty bands repeat the edge rows/columns."""
    from PIL import Image

    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=resample)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        band = height // 2 - src_h // 2
        if band > 0:
            # stretch the first and the last row over the bands above and below
            out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(
                resized.resize((width, band), box=(0, resized.height, width, resized.height)), box=(0, band + src_h)
            )
    elif ratio > src_ratio:
        band = width // 2 - src_w // 2
        if band > 0:
            out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(
                resized.resize((band, height), box=(resized.width, 0, resized.width, height)), box=(band + src_w, 0)
            )
    return out


def _resize_and_crop(image: PIL.Image.Image, width: int, height: int, resample: int) -> PIL.Image.Image:
    """Cover (width, height) keeping the aspect ratio, centred, cutting what overflows."""
    from PIL import Image

    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=resample)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


def resize_pil(image: PIL.Image.Image, width: int, height: int, resize_mode: str = "default") -> PIL.Image.Image:
    """LANCZOS resize to (width, height): "default" stretches, "fill" fits and repeats the edges, "crop" covers
    and cuts (the last two keep the aspect ratio and return RGB)."""
    from PIL import Image

    if resize_mode == "default":
        return image.resize((width, height), resample=Image.LANCZOS)
    if resize_mode == "fill":
        return _resize_and_fill(image, width, height, Image.LANCZOS)
    if resize_mode == "crop":
        return _resize_and_crop(image, width, height, Image.LANCZOS)
    raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)}, but got {resize_mode!r}.")


def apply_overlay(
    mask: PIL.Image.Image,
    init_image: PIL.Image.Image,
    image: PIL.Image.Image,
    crop_coords: tuple[int, int, int, int] | None = None,
) -> PIL.Image.Image:
    """Paste the generated `image` over `init_image`: inside the mask the new pixels, outside it the original.

    With `crop_coords` (x1, y1, x2, y2) the generated image is the crop's content: it is resized (cover and cut)
    to the box and placed there first. Returns an RGB image of `init_image`'s size.
    """
    from PIL import Image, ImageOps

    width, height = init_image.width, init_image.height
    # the original, premultiplied by the inverted mask: opaque where the mask is black (kept), clear where white
    kept = Image.new("RGBa", (width, height))
    kept.paste(init_image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    kept = kept.convert("RGBA")
    if crop_coords is not None:
        x1, y1, x2, y2 = crop_coords
        canvas = Image.new("RGBA", (width, height))
        canvas.paste(resize_pil(image, x2 - x1, y2 - y1, "crop"), (x1, y1))
        image = canvas.convert("RGB")
    image = image.convert("RGBA")
    image.alpha_composite(kept)
    return image.convert("RGB")


def mask_latents(mask: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """(B, 1, H, W) pixel mask -> (B, 1, h, w) at latent size, nearest-neighbour (as diffusers)."""
    return F.interpolate(mask, size=(latent_height, latent_width))


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image (B, 3, H, W) in [-1, 1] with the masked pixels (mask >= 0.5) set to 0, i.e. grey."""
    return image * (mask < 0.5)


def spatial_size(image: object, *, mask: bool = False, latent_channels: int = 4) -> tuple[int, int] | None:
    """(height, width) of an image or mask input as the preprocessing will read it (first item of a list), or
    None for latents (a tensor with `latent_channels` channels). Raises TypeError for other kinds of input.

    Shapes: PIL; arrays (H, W[, C]) / (B, H, W, C); tensors (C, H, W) / (B, C, H, W). Masks may also be arrays
    (B, H, W) and tensors (H, W) / (B, H, W) / (B, 1, H, W), read as diffusers' mask processor does.
    """
    from PIL import Image

    name = "mask_image" if mask else "image"
    first = image[0] if isinstance(image, list) and image else image
    if isinstance(first, Image.Image):
        return first.height, first.width
    if isinstance(first, np.ndarray) and first.ndim in (2, 3, 4):
        if first.ndim == 4 or (mask and first.ndim == 3 and first.shape[-1] != 1):
            return first.shape[1], first.shape[2]
        return first.shape[0], first.shape[1]
    if isinstance(first, torch.Tensor) and first.ndim in (2, 3, 4):
        if not mask and first.ndim >= 3 and first.shape[-3] == latent_channels:
            return None
        return first.shape[-2], first.shape[-1]
    raise TypeError(
        f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them, but got "
        f"{type(image).__name__}" + (f" of shape {tuple(first.shape)}" if hasattr(first, "shape") else "") + "."
    )
