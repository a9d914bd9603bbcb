"""Small helpers the server tests share: images as base64 and PNG parameters."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from PIL import Image


def png_b64(image: Image.Image, *, data_url: bool = False, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    text = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{text}" if data_url else text


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def square_scene(size: int = 128, colour=(220, 30, 30), background=(30, 30, 220)) -> tuple[Image.Image, Image.Image]:
    """A coloured square top left on a flat background, and the mask of that square (white = redraw)."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = background
    pixels[16:64, 16:64] = colour
    mask = np.zeros((size, size), np.uint8)
    mask[8:72, 8:72] = 255
    return Image.fromarray(pixels), Image.fromarray(mask)


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Poll a native job until it ends (bounded); return its final JSON."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")
