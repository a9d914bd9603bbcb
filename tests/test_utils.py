"""sdxl.utils.load_image / make_image_grid against diffusers.utils on the same inputs (local files, a local HTTP
server for URLs: no internet needed)."""

from __future__ import annotations

import http.server
import socket
import threading
from functools import partial

import numpy as np
import pytest
from PIL import Image

from sdxl.utils import load_image, make_image_grid


def _image(size=(24, 16), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if channels == 1 else data, mode)


def _same(a: Image.Image, b: Image.Image) -> None:
    assert a.mode == b.mode and a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path}: an RGB PNG, an RGBA PNG, a grayscale PNG, a JPEG with EXIF orientation 6, a non-image."""
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, mode in (("rgb", "RGB"), ("rgba", "RGBA"), ("gray", "L")):
        paths[name] = folder / f"{name}.png"
        _image(mode=mode).save(paths[name])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    paths["rotated"] = folder / "rotated.jpg"
    _image().save(paths["rotated"], exif=exif)
    paths["text"] = folder / "not_an_image.png"
    paths["text"].write_text("hello")
    return paths


@pytest.fixture(scope="module")
def server(files):
    """A local HTTP server over the images' folder; yields its base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(files["rgb"].parent))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("name", ["rgb", "rgba", "gray", "rotated"])
def test_load_image_path_matches_diffusers(files, name):
    from diffusers.utils import load_image as theirs

    ours = load_image(str(files[name]))
    _same(ours, theirs(str(files[name])))
    assert ours.mode == "RGB"
    _same(load_image(files[name]), ours)  # a pathlib.Path too


def test_exif_orientation_is_applied(files):
    image = load_image(str(files["rotated"]))
    assert image.size == (16, 24)  # the 24x16 file displays rotated


def test_load_image_pil_and_convert_method_match_diffusers(files):
    from diffusers.utils import load_image as theirs

    source = _image(mode="RGBA")
    _same(load_image(source), theirs(source))
    gray = load_image(str(files["rgb"]), convert_method=lambda im: im.convert("L"))
    _same(gray, theirs(str(files["rgb"]), convert_method=lambda im: im.convert("L")))
    assert gray.mode == "L"


def test_load_image_url(files, server):
    from diffusers.utils import load_image as theirs

    url = f"{server}/rgba.png"
    _same(load_image(url), theirs(url))


def test_url_not_found_is_a_clear_error(server):
    with pytest.raises(FileNotFoundError, match="HTTP 404.*pass the local path"):
        load_image(f"{server}/missing.png")


def test_offline_url_is_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FileNotFoundError, match="may be offline.*pass the local path"):
        load_image(f"http://127.0.0.1:{port}/image.png")


def test_hf_hub_offline_does_not_try_the_network(monkeypatch, server):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_image(f"{server}/rgb.png")


def test_url_that_is_not_an_image(server):
    with pytest.raises(ValueError, match="did not return an image"):
        load_image(f"{server}/not_an_image.png")


def test_bad_inputs(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor an http"):
        load_image(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="not an image file"):
        load_image(str(files["text"]))
    with pytest.raises(TypeError, match="got ndarray"):
        load_image(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("rows,cols,resize", [(1, 3, None), (2, 2, None), (2, 2, 10), (3, 1, 7)])
def test_make_image_grid_matches_diffusers(rows, cols, resize):
    from diffusers.utils import make_image_grid as theirs

    images = [_image(seed=i) for i in range(rows * cols)]
    images[-1] = images[-1].resize((30, 12))  # another size, as the seed's grid of a resized image
    _same(make_image_grid(images, rows, cols, resize=resize), theirs(images, rows, cols, resize=resize))


def test_make_image_grid_errors():
    images = [_image(seed=i) for i in range(3)]
    with pytest.raises(ValueError, match="3 images for a 2 x 2 grid"):
        make_image_grid(images, rows=2, cols=2)
    with pytest.raises(ValueError, match="`rows` must be a positive int"):
        make_image_grid(images, rows=0, cols=3)
    with pytest.raises(TypeError, match="PIL images"):
        make_image_grid([np.zeros((2, 2, 3))], rows=1, cols=1)
