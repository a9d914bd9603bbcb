"""The web page of `sdxl serve` (GET /), driven in a real headless Chromium against a real `sdxl serve --model demo`.

Debian's Chromium and Playwright, or the tests are skipped (an error under CI): see page_helpers.py. The input image's
mask editor, drag-and-drop and paste have their own module, test_page_mask.py.

`SDXL_PAGE_SCREENSHOT=docs/images/server-page.png pytest tests/server/test_page.py -k screenshot` retakes the README's
screenshot.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from page_helpers import JOB_MS, browser, call, card, fill, finished, generate, open_page
from playwright.sync_api import Page, expect

TOKEN = "page-test-token"


@pytest.fixture(scope="module")
def server(spawn_module_server, tmp_path_factory):
    """`sdxl serve --model demo` (a subprocess on a free loopback port) shared by this module's tests."""
    return spawn_module_server(tmp_path_factory.mktemp("page") / "data")


def preview_is(page: Page, prefix: str) -> None:
    page.wait_for_function(
        "prefix => (document.getElementById('live-preview').getAttribute('src') || '').includes(prefix)",
        arg=prefix, timeout=JOB_MS,
    )


# ---- tests ---------------------------------------------------------------------------------------------------------

def test_the_form_offers_the_servers_models_samplers_and_limits(page, server):
    caps = call(server, "/v1/capabilities")
    assert page.locator("#model").input_value() == caps["default_model"] == "demo"
    expect(page.locator("#refiner option")).to_have_text(["none", "demo-refiner"])
    expect(page.locator("#sampler option")).to_have_count(len(caps["samplers"]) + 1)
    page.get_by_label("Sampler").select_option("DPM++ 2M Karras")
    expect(page.get_by_label("Steps", exact=True)).to_have_value(str(caps["defaults"]["steps"]))
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("max", str(caps["limits"]["max_steps"]))
    expect(page.get_by_label("Batch size")).to_have_attribute("max", str(caps["limits"]["max_batch"]))
    fill(page, seed="77")
    page.get_by_role("button", name="Random").click()
    expect(page.get_by_label("Seed (-1: random)", exact=True)).to_have_value("-1")


def test_submit_shows_progress_a_live_preview_and_the_finished_image_with_its_parameters(page):
    prompt = "a red circle on a blue background"
    generate(page, prompt, steps="16", seed="1234")
    preview_is(page, "data:image/png;base64,")  # a preview pushed by Server-Sent Events
    page.wait_for_function("document.getElementById('live-progress').value > 0")
    expect(page.locator("#live-status")).to_contain_text(prompt)
    done = card(page, prompt)
    expect(done.locator(".badge")).to_have_text("done", timeout=JOB_MS)
    expect(done.locator("pre.infotext")).to_contain_text("Steps: 16")
    expect(done.locator("pre.infotext")).to_contain_text("Seed: 1234")
    expect(done.get_by_role("img")).to_have_js_property("naturalWidth", 128)  # the PNG loaded
    expect(page.locator("#live-status")).to_contain_text("done")
    expect(page.locator("#live")).to_have_attribute("data-transport", "sse")


def test_cancel_a_queued_and_a_running_job(page, server):
    running, queued = "a white cross in the top left corner on a black background", "a white square on a red background"
    generate(page, running, steps="150")
    generate(page, queued, steps="150")
    waiting = page.get_by_role("list", name="Queue").get_by_role("listitem").filter(has_text=queued)
    expect(waiting).to_contain_text("#1", timeout=JOB_MS)
    page.wait_for_function("document.getElementById('live-progress').value >= 1", timeout=JOB_MS)
    expect(page.locator("#live-status")).to_contain_text(running)

    waiting.get_by_role("button", name="Cancel").click()
    expect(waiting).to_have_count(0)
    expect(card(page, queued).locator(".badge")).to_have_text("cancelled")
    page.locator("#live-cancel").click()
    expect(page.locator("#live-status")).to_contain_text("cancelled")
    expect(card(page, running).locator(".badge")).to_have_text("cancelled")
    expect(page.locator("#queue-empty")).to_be_visible()

    never_started = call(server, f"/v1/jobs/{card(page, queued).get_attribute('data-job-id')}")
    stopped = call(server, f"/v1/jobs/{card(page, running).get_attribute('data-job-id')}")
    assert never_started["started"] is None and never_started["step"] == 0
    assert stopped["started"] is not None and 1 <= stopped["step"] < 150


@pytest.fixture(scope="module")
def past_job(server) -> dict:
    """A finished job with distinctive parameters, queued through the API."""
    job = call(server, "/v1/jobs", {
        "prompt": "a yellow star on a purple background", "negative_prompt": "blurry", "sampler": "DPM++ 2M Karras",
        "steps": 6, "guidance_scale": 7.5, "seed": 4242, "width": 128, "height": 128,
    })
    job = finished(server, job["id"])
    assert job["state"] == "done", job
    return job


def test_reuse_fills_the_form_from_a_past_job(past_job, page):
    past = card(page, past_job["params"]["prompt"])
    expect(past.locator("pre.infotext")).to_contain_text("Seed: 4242")
    past.get_by_role("button", name="Reuse").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a yellow star on a purple background")
    expect(page.get_by_label("Negative prompt")).to_have_value("blurry")
    expect(page.get_by_label("Sampler")).to_have_value("DPM++ 2M Karras")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("6")
    expect(page.get_by_label("CFG scale")).to_have_value("7.5")
    expect(page.get_by_label("Seed (-1: random)", exact=True)).to_have_value("4242")
    expect(page.get_by_label("Width")).to_have_value("128")

    page.reload()  # the image viewer offers the same
    card(page, past_job["params"]["prompt"]).get_by_role("img").click()
    viewer = page.get_by_role("dialog")
    expect(viewer).to_be_visible()
    expect(viewer.locator("pre")).to_contain_text("Sampler: DPM++ 2M Karras")
    viewer.get_by_role("button", name="Reuse parameters").click()
    expect(viewer).to_be_hidden()
    expect(page.get_by_label("Seed (-1: random)", exact=True)).to_have_value("4242")


def test_progress_by_polling_when_server_sent_events_are_not_used(context, server):
    prompt = "an orange triangle on a green background"
    with open_page(context, server.url + "/?transport=poll") as page:
        generate(page, prompt, steps="30")
        preview_is(page, "/preview?step=")  # GET /v1/jobs/{id}/preview
        expect(card(page, prompt).locator(".badge")).to_have_text("done", timeout=JOB_MS)
        expect(page.locator("#live-status")).to_contain_text("done")
        expect(page.locator("#live")).to_have_attribute("data-transport", "poll")


def test_image_to_image_sends_the_chosen_file(page, server, tmp_path):
    from PIL import Image

    source = tmp_path / "input.png"
    Image.new("RGB", (128, 128), (200, 30, 30)).save(source)
    page.get_by_text("Input image: image-to-image, inpainting").click()
    page.get_by_label("Input image", exact=True).set_input_files(source)
    expect(page.get_by_alt_text("Chosen input image")).to_have_attribute("src", re.compile("^data:image/png"))
    prompt = "a blue circle on a yellow background"
    generate(page, prompt, steps="4", strength="0.5")
    done = card(page, prompt)
    expect(done.locator(".badge")).to_have_text("done", timeout=JOB_MS)
    expect(done.locator("pre.infotext")).to_contain_text("Denoising strength: 0.5")
    assert call(server, f"/v1/jobs/{done.get_attribute('data-job-id')}")["params"]["denoising_strength"] == 0.5


def test_the_servers_error_is_shown_and_nothing_is_queued(page, server):
    before = call(server, "/v1/jobs?limit=1")["total"]
    fill(page, prompt="a green square", width="100")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_contain_text("width must be a positive multiple of 8")
    assert call(server, "/v1/jobs?limit=1")["total"] == before


def test_history_pages_and_filters_by_state(page, server):
    blocker = call(server, "/v1/jobs", {"prompt": "a purple star", "steps": 150})
    ids = [call(server, "/v1/jobs", {"prompt": f"paged job {i}", "steps": 2})["id"] for i in range(13)]
    for job_id in [*ids, blocker["id"]]:
        call(server, f"/v1/jobs/{job_id}/cancel", {})
    finished(server, blocker["id"])
    total = call(server, "/v1/jobs?state=cancelled&limit=1")["total"]
    assert total >= 14

    page.get_by_label("Show").select_option("cancelled")
    cards = page.locator("#history article")
    expect(cards).to_have_count(12)
    expect(page.locator("#history-page")).to_have_text(f"1–12 of {total}")
    expect(page.get_by_role("button", name="Newer")).to_be_disabled()
    page.get_by_role("button", name="Older").click()
    expect(cards).to_have_count(min(12, total - 12))
    expect(page.locator("#history-page")).to_have_text(f"13–{min(24, total)} of {total}")
    expect(page.get_by_role("button", name="Newer")).to_be_enabled()
    expect(cards.locator(".badge")).to_have_text(["cancelled"] * min(12, total - 12))


def test_the_page_works_behind_a_token(playwright, spawn_server, tmp_path):
    """With --token, the browser's HTTP Basic credentials cover the page, its fetches and its event stream."""
    protected = spawn_server(tmp_path / "data", "--token", TOKEN)
    with protected.client() as client:
        assert client.get("/").status_code == 401
    credentials = {"username": "anyone", "password": TOKEN}
    with browser(playwright, tmp_path / "profile", http_credentials=credentials) as ctx, \
            open_page(ctx, protected.url + "/") as page:
        prompt = "a black circle on a white background"
        generate(page, prompt, steps="4")
        expect(card(page, prompt).locator(".badge")).to_have_text("done", timeout=JOB_MS)
        expect(page.locator("#live-status")).to_contain_text("done")
        expect(page.locator("#live")).to_have_attribute("data-transport", "sse")


def test_schedule_hires_variation_and_lora_fields_reach_the_job_and_come_back(playwright, spawn_server, tmp_path):
    """The second panel's fields go into the job (native API names) and Reuse puts them back."""
    import sys

    from safetensors.torch import save_file

    from sdxl import StableDiffusionXLPipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_files import kohya_lora  # tests/lora_files.py

    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(kohya_lora(StableDiffusionXLPipeline.from_pretrained("demo").unet, {}, seed=3),
              str(folder / "shiny.safetensors"))
    served = spawn_server(tmp_path / "data", "--lora-dir", str(folder))
    with browser(playwright, tmp_path / "profile") as ctx, open_page(ctx, served.url + "/") as page:
        page.get_by_label("Sampler").select_option("DPM++ 2M")
        page.get_by_label("Schedule type").select_option("Karras")
        page.get_by_text("Hires fix, variation seed, LoRA").click()
        expect(page.locator("#loras-empty")).to_be_hidden()
        page.get_by_label("Hires upscaler").select_option("Latent (bicubic)")
        fill(page, hires_scale="1.5", hires_steps="2", hires_strength="0.6", subseed="7", subseed_strength="0.3")
        page.get_by_label("shiny").fill("0.8")
        prompt = "a white star on a red background"
        generate(page, prompt, steps="4", seed="5", width="64", height="64")
        done = card(page, prompt)
        expect(done.locator(".badge")).to_have_text("done", timeout=JOB_MS)
        params = call(served, f"/v1/jobs/{done.get_attribute('data-job-id')}")["params"]
        assert (params["schedule"], params["hires_scale"], params["hires_upscaler"], params["hires_steps"]) == (
            "Karras", 1.5, "Latent (bicubic)", 2)
        assert (params["denoising_strength"], params["subseed"], params["subseed_strength"]) == (0.6, 7, 0.3)
        assert [tuple(lora) for lora in params["loras"]] == [("shiny", 0.8)]
        for text in ("Schedule type: Karras", "Hires upscale: 1.5", "Variation seed: 7", "Lora hashes"):
            expect(done.locator("pre.infotext")).to_contain_text(text)

        page.reload()
        page.get_by_text("Hires fix, variation seed, LoRA").click()
        card(page, prompt).get_by_role("button", name="Reuse").click()
        expect(page.get_by_label("Schedule type")).to_have_value("Karras")
        expect(page.get_by_label("Hires upscale (empty: off)")).to_have_value("1.5")
        expect(page.get_by_label("Hires denoising strength")).to_have_value("0.6")
        expect(page.get_by_label("Variation strength (0: off)")).to_have_value("0.3")
        expect(page.get_by_label("shiny")).to_have_value("0.8")


def test_hires_fix_with_a_refiner_sends_the_refiner_pass_and_reuse_restores_it(page, server):
    page.get_by_text("More: prompt syntax, refiner").click()
    page.get_by_label("Refiner", exact=True).select_option("demo-refiner")
    page.get_by_text("Hires fix, variation seed, LoRA").click()
    expect(page.get_by_label("Hires fix: refiner in (with a refiner)")).to_have_value("second pass")
    page.get_by_label("Hires fix: refiner in (with a refiner)").select_option("both passes")
    fill(page, hires_scale="2", hires_steps="2", hires_strength="0.6")
    prompt = "a blue square on a yellow background"
    generate(page, prompt, steps="3", seed="3", width="64", height="64")
    done = card(page, prompt)
    expect(done.locator(".badge")).to_have_text("done", timeout=JOB_MS)
    params = call(server, f"/v1/jobs/{done.get_attribute('data-job-id')}")["params"]
    assert (params["refiner"], params["hires_refiner_pass"]) == ("demo-refiner", "both passes")
    expect(done.locator("pre.infotext")).to_contain_text("Hires refiner: both passes")
    page.reload()
    page.get_by_text("Hires fix, variation seed, LoRA").click()
    card(page, prompt).get_by_role("button", name="Reuse").click()
    expect(page.get_by_label("Hires fix: refiner in (with a refiner)")).to_have_value("both passes")


@pytest.mark.skipif(not os.environ.get("SDXL_PAGE_SCREENSHOT"), reason="set SDXL_PAGE_SCREENSHOT=PATH to take it")
def test_screenshot(page, server):
    """The README's picture: finished demo images in the history and a job in progress with its live preview."""
    prompts = ["a red circle on a blue background", "a yellow star on a purple background",
               "a green triangle on a white background", "a white cross on an orange background",
               "a blue square on a yellow background"]
    jobs = [call(server, "/v1/jobs", {"prompt": p, "steps": 20, "seed": 7 + i}) for i, p in enumerate(prompts)]
    for job in jobs:
        finished(server, job["id"])
    page.reload()
    generate(page, "a purple circle in the top left corner on a green background", steps="40", seed="3",
             negative_prompt="blurry")
    generate(page, "an orange star on a black background", steps="20")
    page.wait_for_function("document.getElementById('live-progress').value >= 34", timeout=JOB_MS)
    preview_is(page, "data:image/png;base64,")
    page.screenshot(path=os.environ["SDXL_PAGE_SCREENSHOT"], full_page=True)
    with server.client() as client:  # no need to wait for them (one may end meanwhile: a 409 then)
        for job in client.get("/v1/jobs", params={"limit": 5}).json()["jobs"]:
            client.post(f"/v1/jobs/{job['id']}/cancel")
