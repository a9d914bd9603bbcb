"""Images the APIs decode are taken upright (EXIF orientation applied), as browsers show them and diffusers'
`load_image` reads them: a mask painted on what the page showed fits the image the pipeline gets."""

from __future__ import annotations

import base64
import io

from PIL import Image
from server_helpers import png_b64

from sdxl.server.a1111 import decode_mask
from sdxl.server.images import decode_image, open_image

LIMIT = 10**7


def rotated_jpeg(width: int = 200, height: int = 100, orientation: int = 6) -> str:
    """A JPEG stored `width` x `height` whose EXIF says to show it rotated (6: 90 degrees clockwise)."""
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, width // 4, height))  # a blue band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return base64.b64encode(buffer.getvalue()).decode()


def test_photos_with_an_exif_rotation_are_decoded_upright():
    image = decode_image(rotated_jpeg(), field="image", max_pixels=LIMIT)
    assert image.size == (100, 200) and image.mode == "RGB"
    r, _, b = image.getpixel((50, 10))  # the stored left edge is now the top
    assert b > 150 and r < 80
    mask = decode_mask(rotated_jpeg(), max_pixels=LIMIT)
    assert mask.size == (100, 200)
    # no orientation: unchanged; png-info still reads the file as stored (text chunks kept)
    assert decode_image(png_b64(Image.new("RGB", (64, 32))), field="image", max_pixels=LIMIT).size == (64, 32)
    assert open_image(rotated_jpeg(), field="image", max_pixels=LIMIT).size == (200, 100)


def test_a_mask_painted_on_the_shown_photo_fits_it(demo_server):
    mask = png_b64(Image.new("L", (100, 200), 255))
    with demo_server.client() as client:
        response = client.post("/v1/jobs", json={"prompt": "a red circle", "steps": 1, "image": rotated_jpeg(),
                                                 "mask": mask, "strength": 0.5})  # fmt: skip
        assert response.status_code == 202, response.text
        client.post(f"/v1/jobs/{response.json()['id']}/cancel")
        sideways = png_b64(Image.new("L", (200, 100), 255))
        response = client.post("/v1/jobs", json={"prompt": "a red circle", "steps": 1, "image": rotated_jpeg(),
                                                 "mask": sideways, "strength": 0.5})  # fmt: skip
        assert response.status_code == 422 and "the mask is 200x100" in response.text
