"""Image helpers with diffusers.utils' names: `load_image` (path, URL or PIL image) and `make_image_grid`."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PIL is imported by the functions that need it (light `import sdxl`)
    from PIL import Image

URL_TIMEOUT_S = 30.0  # seconds, for downloading an image URL


def _fetch(url: str) -> bytes:
    """The bytes at `url`; FileNotFoundError saying to download the file by hand when that is not possible."""
    how = f"Download it yourself (e.g. `curl -L -o image.png '{url}'`) and pass the local path instead."
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(f"Cannot fetch {url}: HF_HUB_OFFLINE is set, so no network access is tried. {how}")
    request = urllib.request.Request(url, headers={"User-Agent": "sdxl"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise FileNotFoundError(f"Cannot fetch {url}: the server answered HTTP {error.code} {error.reason}. {how}") from None
    except (urllib.error.URLError, OSError) as error:  # offline, DNS failure, refused, timeout
        reason = getattr(error, "reason", error)
        raise FileNotFoundError(f"Cannot fetch {url} ({reason}): this machine may be offline. {how}") from None


def load_image(
    image: str | os.PathLike | Image.Image,
    convert_method: Callable[[Image.Image], Image.Image] | None = None,
) -> Image.Image:
    """A PIL image from a local path, an http(s) URL or a PIL image, as `diffusers.utils.load_image`.

    The EXIF orientation is applied, then `convert_method(image)`, or by default conversion to RGB. A URL is fetched
    with the standard library; offline (or with HF_HUB_OFFLINE set) it is a FileNotFoundError that says to download
    the file and pass its path.
    """
    import PIL.Image
    import PIL.ImageOps

    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            data = _fetch(source)
            try:
                image = PIL.Image.open(io.BytesIO(data))
            except PIL.UnidentifiedImageError:
                raise ValueError(f"{source} did not return an image PIL can read ({len(data)} bytes).") from None
        elif os.path.isfile(source):
            try:
                image = PIL.Image.open(source)
            except PIL.UnidentifiedImageError:
                raise ValueError(f"{source} is not an image file PIL can read.") from None
        else:
            raise FileNotFoundError(
                f"{source} is neither an existing file nor an http(s) URL: give a local image path or a URL "
                "starting with http:// or https://."
            )
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(f"load_image takes a path, an http(s) URL or a PIL image, but got {type(image).__name__}.")
    image = PIL.ImageOps.exif_transpose(image)
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def make_image_grid(images: Sequence[Image.Image], rows: int, cols: int, resize: int | None = None) -> Image.Image:
    """One RGB image with `images` in a `rows` x `cols` grid, row by row, as `diffusers.utils.make_image_grid`.

    Cells have the first image's size (after `resize` to `resize` x `resize` pixels, when given); an image of
    another size is pasted at its cell's top-left corner as is.
    """
    import PIL.Image

    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_image_grid: `{name}` must be a positive int, but got {value!r}.")
    if len(images) != rows * cols:
        raise ValueError(
            f"make_image_grid got {len(images)} images for a {rows} x {cols} grid: pass exactly rows * cols = "
            f"{rows * cols} images."
        )
    bad = [type(im).__name__ for im in images if not isinstance(im, PIL.Image.Image)]
    if bad:
        raise TypeError(f"make_image_grid takes PIL images, but got {bad}: convert them first (e.g. pipe's 'pil' output).")
    if resize is not None:
        images = [im.resize((resize, resize)) for im in images]
    w, h = images[0].size
    grid = PIL.Image.new("RGB", size=(cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, box=(i % cols * w, i // cols * h))
    return grid


__all__ = ["load_image", "make_image_grid"]
