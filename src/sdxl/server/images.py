"""Images in and out of the HTTP APIs: base64 (with or without a `data:` prefix) to PIL, checked, and back."""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import TYPE_CHECKING

from sdxl.server.errors import BadRequest

if TYPE_CHECKING:
    from PIL import Image

_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(;[\w=-]+)*;base64,", re.IGNORECASE)


def open_image(text: str, *, field: str, max_pixels: int) -> Image.Image:
    """A loaded PIL image (its own mode and text chunks kept) from base64 text, raw or a `data:image/...;base64,`
    URL. BadRequest for anything else: bad base64, bytes that are not an image, or an image over `max_pixels`
    (checked from the header, before the pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"`{field}` must be a base64-encoded image (PNG, JPEG, WEBP), optionally as a data: URL")
    text = _DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"`{field}` is not valid base64; send the image's bytes base64-encoded") from None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadRequest(
                f"`{field}` is {width}x{height} = {width * height} pixels; the server takes at most {max_pixels}"
            )
        image.load()
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BadRequest(f"`{field}` decodes to bytes that are not a readable image (PNG, JPEG, WEBP, ...)") from None
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image as it is shown: its EXIF orientation applied (phone photos), as browsers and diffusers'
    `load_image` apply it, so a mask painted on what the page showed fits the image the pipeline gets."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def decode_image(text: str, *, field: str, max_pixels: int) -> Image.Image:
    """`open_image` upright, as RGB; transparent pixels become black."""
    from PIL import Image

    image = upright(open_image(text, field=field, max_pixels=max_pixels))
    if has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette with a transparent entry."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def encode_png(path_or_image) -> str:
    """Raw base64 of a PNG file's bytes (a path) or of a PIL image saved as PNG."""
    if hasattr(path_or_image, "save"):
        buffer = io.BytesIO()
        path_or_image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        with open(path_or_image, "rb") as f:
            data = f.read()
    return base64.b64encode(data).decode("ascii")
