"""The web page's input image: drag-and-drop, paste, and the inpainting mask painted on a <canvas>.

Headless Chromium (see page_helpers.py) against a real `sdxl serve --model demo`. What the server received is read
from its data folder: a queued job's input images wait there as PNGs (`inputs/<id>/image.png`, `mask.png`) until the
job runs, so one test keeps a long job running in front of its own while it looks.

`SDXL_MASK_SCREENSHOT=docs/images/server-page-mask.png pytest tests/server/test_page_mask.py -k screenshot` retakes the
README's picture of the mask editor.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from page_helpers import browser, call, card, fill, finished, open_page
from PIL import Image
from playwright.sync_api import Page, expect

from sdxl.server.worker import DataFolder

WIDTH, HEIGHT = 480, 320  # wider than the form's column: the canvas is shown smaller than the image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("page-mask") / "data"


@pytest.fixture(scope="module")
def server(spawn_module_server, data_dir):
    """`sdxl serve --model demo` (a subprocess on a free loopback port) shared by this module's tests."""
    return spawn_module_server(data_dir)


# ---- helpers -------------------------------------------------------------------------------------------------------


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A noisy RGB picture as PNG bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def open_image_panel(page: Page) -> None:
    if page.locator("#image-inputs").get_attribute("open") is None:
        page.get_by_text("Input image: image-to-image, inpainting").click()


def choose_image(page: Page, tmp_path, width: int = WIDTH, height: int = HEIGHT, *, inpaint: bool = True) -> None:
    path = tmp_path / f"input-{width}x{height}.png"
    path.write_bytes(png(width, height))
    open_image_panel(page)
    page.get_by_label("Input image", exact=True).set_input_files(path)
    if inpaint:
        page.get_by_label("Use it for").select_option("inpaint")
    expect(page.locator("#mask-canvas")).to_have_attribute("width", str(width))
    expect(page.locator("#mask-canvas")).to_have_attribute("height", str(height))


def stroke(page: Page, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """Drag the mouse over the canvas between two points given as fractions of its shown size; returns the shown
    size (CSS pixels)."""
    canvas = page.locator("#mask-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=8)
    page.mouse.up()
    return box["width"], box["height"]


def distance_to_segment(width: int, height: int, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Each pixel centre's distance to the segment a-b (image pixels)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))


def assert_stroke(mask: np.ndarray, a, b, radius: float, slack: float = 3.0) -> None:
    """White within `radius` of the segment a-b, black beyond it (give or take `slack` pixels at the edge)."""
    distance = distance_to_segment(mask.shape[1], mask.shape[0], a, b)
    assert set(np.unique(mask)) <= {0, 255}, "the mask is not black and white"
    assert (mask[distance <= radius - slack] == 255).all(), "part of the stroke is missing from the mask"
    assert (mask[distance >= radius + slack] == 0).all(), "the mask is white away from the stroke"


def painted_mask(page: Page) -> np.ndarray | None:
    """The mask the page would send now (its `maskPNG()`), as a 2-D array; None when nothing is painted."""
    url = page.evaluate("maskPNG()")
    if url is None:
        return None
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.mode in ("RGB", "RGBA")
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[..., 0]


def transfer(page: Page, data: bytes, name: str, mime: str = "image/png"):
    """A DataTransfer holding one file (what a drop or a paste carries)."""
    return page.evaluate_handle(
        """([b64, name, type]) => {
            const data = new DataTransfer();
            data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type}));
            return data;
        }""",
        [base64.b64encode(data).decode("ascii"), name, mime],
    )


def job_count(server) -> int:
    return call(server, "/v1/jobs?limit=1")["total"]


# ---- tests ---------------------------------------------------------------------------------------------------------


def test_a_painted_stroke_reaches_the_server_as_a_black_and_white_mask_of_the_images_size(
    page, server, data_dir, tmp_path
):
    choose_image(page, tmp_path)
    fill(page, brush="24")
    expect(page.locator("#brush-size")).to_have_text("24")
    shown_width, shown_height = stroke(page, (0.2, 0.3), (0.7, 0.6))
    assert shown_width < 0.8 * WIDTH, "the canvas should be shown smaller than the image"
    assert shown_height / shown_width == pytest.approx(HEIGHT / WIDTH, rel=0.02)

    blocker = call(server, "/v1/jobs", {"prompt": "a long job in front", "steps": 150})
    fill(page, prompt="a green circle painted in", steps="2", strength="0.9", mask_blur="6")
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Generate").click()
    assert answer.value.status == 202, answer.value.text()
    job_id = answer.value.json()["id"]
    try:
        inputs = DataFolder(data_dir).inputs(job_id)  # where the worker reads them from
        mask = Image.open(inputs / "mask.png")
        assert mask.size == (WIDTH, HEIGHT)
        a, b = (0.2 * WIDTH, 0.3 * HEIGHT), (0.7 * WIDTH, 0.6 * HEIGHT)
        assert_stroke(np.asarray(mask.convert("L")), a, b, radius=12)
        assert Image.open(inputs / "image.png").tobytes() == Image.open(io.BytesIO(png(WIDTH, HEIGHT))).tobytes()
    finally:
        call(server, f"/v1/jobs/{blocker['id']}/cancel", {})

    job = finished(server, job_id)
    assert job["state"] == "done", job
    assert job["params"]["mask_blur"] == 6 and job["params"]["denoising_strength"] == 0.9
    assert job["params"]["padding_mask_crop"] is None
    fill(page, mask_blur="0")
    page.get_by_label("Use it for").select_option("img2img")
    card(page, "a green circle painted in").get_by_role("button", name="Reuse").click()
    expect(page.get_by_label("Use it for")).to_have_value("inpaint")
    expect(page.locator("#mask_blur")).to_have_value("6")
    expect(page.locator("#mask-canvas")).to_be_visible()  # the image and its mask stay in the editor
    page.reload()  # no image in the form: the note says so
    card(page, "a green circle painted in").get_by_role("button", name="Reuse").click()
    expect(page.locator("#form-notice")).to_contain_text("The server does not keep input images: choose it again.")
    open_image_panel(page)
    expect(page.get_by_label("Use it for")).to_have_value("inpaint")
    expect(page.get_by_text("Choose an input image above")).to_be_visible()


def test_an_image_dropped_or_pasted_is_the_input_image(page, server):
    drop_zone = page.locator("#image-inputs")
    open_image_panel(page)
    page.get_by_label("Use it for").select_option("inpaint")
    expect(page.get_by_text("Choose an input image above")).to_be_visible()

    drop_zone.dispatch_event("dragover", {"dataTransfer": transfer(page, png(64, 48), "dropped.png")})
    expect(drop_zone).to_have_class("drop dragging")  # the panel shows where to drop
    drop_zone.dispatch_event("drop", {"dataTransfer": transfer(page, png(64, 48), "dropped.png")})
    expect(drop_zone).to_have_class("drop")
    expect(page.get_by_alt_text("Chosen input image")).to_have_attribute(
        "src", "data:image/png;base64," + base64.b64encode(png(64, 48)).decode()
    )
    assert page.evaluate("document.getElementById('image').files[0].name") == "dropped.png"
    expect(page.locator("#mask-canvas")).to_have_attribute("width", "64")
    expect(page.get_by_text("Choose an input image above")).to_be_hidden()

    page.evaluate(
        """data => document.body.dispatchEvent(
        new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}))""",
        transfer(page, png(40, 24), "pasted.png"),
    )
    expect(page.locator("#mask-canvas")).to_have_attribute("width", "40")
    expect(page.locator("#mask-canvas")).to_have_attribute("height", "24")
    assert page.evaluate("document.getElementById('image').files[0].name") == "pasted.png"
    # text copied from Word/Excel carries a picture of itself too: pasted into the prompt, the text is meant
    prevented = page.evaluate(
        """data => {
            data.setData("text/plain", "a red circle");
            const paste = new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
            document.getElementById("prompt").dispatchEvent(paste);
            return paste.defaultPrevented;
        }""",
        transfer(page, png(30, 20), "office.png"),
    )
    assert prevented is False
    assert page.evaluate("document.getElementById('image').files[0].name") == "pasted.png"

    drop_zone.dispatch_event("drop", {"dataTransfer": transfer(page, b"just text", "notes.txt", "text/plain")})
    expect(page.get_by_role("alert")).to_have_text("The dropped item holds no image file.")
    drop_zone.dispatch_event("drop", {"dataTransfer": transfer(page, b"not a png", "broken.png")})
    expect(page.get_by_role("alert")).to_contain_text("“broken.png”: not an image this browser can read")
    assert page.evaluate("document.getElementById('image-preview').hasAttribute('src')") is False
    expect(page.get_by_text("Choose an input image above")).to_be_visible()


def test_invert_eraser_and_clear(page, server, tmp_path):
    width, height = 160, 96  # smaller than the canvas is shown: display pixels map to fewer image pixels
    choose_image(page, tmp_path, width, height)
    fill(page, brush="20")
    stroke(page, (0.25, 0.5), (0.75, 0.5))
    a, b = (0.25 * width, 0.5 * height), (0.75 * width, 0.5 * height)
    painted = painted_mask(page)
    assert_stroke(painted, a, b, radius=10)

    page.get_by_role("button", name="Invert").click()
    inverted = painted_mask(page)
    assert (inverted == 255 - painted).all()  # an edge pixel's alpha a becomes 255 - a: over the half exactly once
    page.get_by_role("button", name="Invert").click()

    page.get_by_role("button", name="Eraser").click()
    expect(page.get_by_role("button", name="Eraser")).to_have_attribute("aria-pressed", "true")
    stroke(page, (0.5, 0.0), (0.5, 1.0))  # a vertical cut through the middle of the stroke
    cut, middle = painted_mask(page), width // 2  # the eraser is 20 px wide too: 10 px either side, give or take
    assert (cut[:, middle - 7 : middle + 7] == 0).all()
    assert (cut[:, : middle - 13] == painted[:, : middle - 13]).all()
    assert (cut[:, middle + 13 :] == painted[:, middle + 13 :]).all()
    page.get_by_role("button", name="Eraser").click()
    expect(page.get_by_role("button", name="Eraser")).to_have_attribute("aria-pressed", "false")

    page.get_by_role("button", name="Clear mask").click()
    assert painted_mask(page) is None
    before = job_count(server)
    fill(page, prompt="an empty mask")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("The mask is empty: paint the area to repaint")
    assert job_count(server) == before


def test_mask_files_and_the_errors_of_inpainting_without_an_image(page, server, tmp_path):
    before = job_count(server)
    open_image_panel(page)
    page.get_by_label("Use it for").select_option("inpaint")
    fill(page, prompt="inpainting with nothing to paint on")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("Inpainting needs an input image")

    small = np.zeros((24, 40), np.uint8)
    small[:, 20:] = 255  # the right half is repainted
    mask_file = tmp_path / "mask.png"
    Image.fromarray(small).save(mask_file)
    page.get_by_label("Or upload a mask (white is repainted)").set_input_files(mask_file)
    expect(page.get_by_role("alert")).to_have_text(
        "Choose the input image first: the mask is painted on it, at its size."
    )
    assert job_count(server) == before

    choose_image(page, tmp_path, 80, 48)
    page.get_by_label("Or upload a mask (white is repainted)").set_input_files(mask_file)
    expect(page.locator("#form-notice")).to_contain_text("stretched to the image's 80×48")
    expected = np.zeros((48, 80), np.uint8)
    expected[:, 40:] = 255
    assert (painted_mask(page) == expected).all()

    page.get_by_role("button", name="Clear images").click()
    expect(page.get_by_text("Choose an input image above")).to_be_visible()
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("Inpainting needs an input image")
    assert job_count(server) == before


def test_a_touch_paints_too(playwright, server, tmp_path):
    """Touch screens send pointer events of type "touch": a tap paints a dot of the brush's size."""
    with (
        browser(playwright, tmp_path / "profile", has_touch=True) as ctx,
        open_page(ctx, server.url + "/") as page,
    ):
        choose_image(page, tmp_path, 160, 96)
        fill(page, brush="30")
        canvas = page.locator("#mask-canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.touchscreen.tap(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
        assert_stroke(painted_mask(page), (80, 48), (80, 48), radius=15)


@pytest.mark.skipif(not os.environ.get("SDXL_MASK_SCREENSHOT"), reason="set SDXL_MASK_SCREENSHOT=PATH to take it")
def test_screenshot(page, server, tmp_path):
    """The README's picture: a demo image (upscaled 3x) in the editor with a stroke painted over its shape."""
    job = call(server, "/v1/jobs", {"prompt": "a red circle on a blue background", "steps": 20, "seed": 4})
    assert finished(server, job["id"])["state"] == "done"
    with server.client() as client:
        image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/images/0").content)).convert("RGB")
    path = tmp_path / "circle.png"
    image.resize((image.width * 3, image.height * 3), Image.Resampling.LANCZOS).save(path)
    open_image_panel(page)
    page.get_by_label("Input image", exact=True).set_input_files(path)
    page.get_by_label("Use it for").select_option("inpaint")
    fill(page, prompt="a yellow circle on a blue background", brush="40")
    stroke(page, (0.35, 0.4), (0.65, 0.6))
    stroke(page, (0.35, 0.6), (0.65, 0.4))
    page.locator("#image-inputs").screenshot(path=os.environ["SDXL_MASK_SCREENSHOT"])
