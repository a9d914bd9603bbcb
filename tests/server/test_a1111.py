"""The A1111-compatible API driven by the real clients from PyPI: webuiapi (lenient, sends every legacy key,
data-URL images) and aaa1111 (strict response key sets, WEBP inputs); the PNGs read back by sd-parsers."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from server_helpers import square_scene

webuiapi = pytest.importorskip("webuiapi")
aaa1111 = pytest.importorskip("aaa1111")
sd_parsers = pytest.importorskip("sd_parsers")

PROMPT = "a red circle on a blue background"
PROGRESS_KEYS = {"progress", "eta_relative", "state", "current_image", "textinfo"}


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


@pytest.fixture(scope="module")
def webui(demo_server):
    host, port = _host_port(demo_server.url)
    return webuiapi.WebUIApi(host=host, port=port, sampler="Euler a", steps=6)


@pytest.fixture(scope="module")
def strict(demo_server):
    host, port = _host_port(demo_server.url)
    return aaa1111.AAA1111(host=host, port=port)


def test_webuiapi_txt2img(webui):
    result = webui.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=11, width=128, height=128, cfg_scale=5,
                           batch_size=2)
    assert len(result.images) == 2 and result.images[0].size == (128, 128)
    assert result.info["all_seeds"] == [11, 12] and result.info["seed"] == 11
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 6
    assert len(result.info["infotexts"]) == 2 and "Seed: 12" in result.info["infotexts"][1]
    assert result.parameters["prompt"] == PROMPT  # the request, echoed
    # sd-parsers reads the PNG the server returned
    parsed = sd_parsers.ParserManager().parse(result.images[0])
    assert parsed.generator.name == "AUTOMATIC1111"
    assert parsed.full_prompt == PROMPT and parsed.full_negative_prompt == "blurry"
    (sampler,) = parsed.samplers
    assert sampler.name == "Euler a" and sampler.parameters["seed"] == "11" and sampler.parameters["steps"] == "6"


def test_webuiapi_random_seed_is_echoed(webui):
    result = webui.txt2img(prompt=PROMPT, seed=-1, width=128, height=128)
    seed = result.info["all_seeds"][0]
    assert 0 <= seed < 2**32 and f"Seed: {seed}" in result.info["infotexts"][0]


def test_webuiapi_img2img_and_inpainting(webui):
    image, mask = square_scene()
    result = webui.img2img(images=[image], prompt="a yellow circle on a green background", denoising_strength=0.6,
                           seed=3, width=128, height=128)
    assert result.images[0].size == (128, 128) and "Denoising strength: 0.6" in result.info["infotexts"][0]
    inpainted = webui.img2img(images=[image], mask_image=mask, prompt="a yellow square on a blue background",
                              denoising_strength=0.9, seed=3, width=128, height=128, inpaint_full_res=False,
                              mask_blur=2)
    inverted = webui.img2img(images=[image], mask_image=mask, prompt="a yellow square on a blue background",
                             denoising_strength=0.9, seed=3, width=128, height=128, inpaint_full_res=False,
                             mask_blur=2, inpainting_mask_invert=1)
    a, b, source = (np.asarray(i.convert("RGB")).astype(int) for i in (inpainted.images[0], inverted.images[0], image))
    inside = (slice(24, 56), slice(24, 56))
    # masked: the square's area changes more than the far corner; inverted: the other way round
    assert np.abs(a[inside] - source[inside]).mean() > np.abs(a[100:, 100:] - source[100:, 100:]).mean()
    assert np.abs(b[100:, 100:] - source[100:, 100:]).mean() > np.abs(b[inside] - source[inside]).mean()
    only_masked = webui.img2img(images=[image], mask_image=mask, prompt="a yellow square", denoising_strength=0.9,
                                seed=3, width=128, height=128, inpaint_full_res=True, inpaint_full_res_padding=32)
    assert "Masked area padding: 32" in only_masked.info["infotexts"][0]


def test_webuiapi_refiner_and_listing_calls(webui):
    result = webui.txt2img(prompt=PROMPT, seed=2, width=128, height=128, steps=10,
                           alwayson_scripts={}, override_settings={"sd_model_checkpoint": "demo"})
    assert result.info["sd_model_name"] == "demo"
    payload = {"prompt": PROMPT, "steps": 10, "width": 128, "height": 128, "refiner_checkpoint": "demo-refiner",
               "refiner_switch_at": 0.7}
    refined = webui.custom_post("txt2img", payload, baseurl=True)
    assert "Refiner: demo-refiner" in refined.info["infotexts"][0]
    assert [m["model_name"] for m in webui.get_sd_models()][:2] == ["demo", "demo-refiner"]
    assert webui.util_get_current_model() == "demo"
    samplers = webui.get_samplers()
    assert all(isinstance(v, str) for s in samplers for v in s["options"].values())
    karras = next(s for s in samplers if s["name"] == "DPM++ 2M Karras")
    assert karras["options"]["use_karras_sigmas"] == "True"
    assert {"name", "label"} <= set(webui.get_schedulers()[0])
    assert webui.get_scripts() == {"txt2img": [], "img2img": []}
    memory = webui.get_memory()
    assert {"ram", "cuda"} == set(memory) and memory["ram"]["total"] > 0
    flags = webui.get_cmd_flags()
    assert flags["api"] is True and flags["api_auth"] is None


def test_schedule_types_and_legacy_sampler_names(webui):
    cases = [(("DPM++ 2M", "karras"), ("DPM++ 2M", "Karras")), (("DPM++ 2M", "Karras"), ("DPM++ 2M", "Karras")),
             (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")), (("Euler a", "automatic"), ("Euler a", "Automatic")),
             (("DPM++ 2M Karras", "automatic"), ("DPM++ 2M Karras", "Automatic"))]
    for (sampler, scheduler), (name, label) in cases:
        result = webui.txt2img(prompt=PROMPT, seed=1, width=128, height=128, sampler_name=sampler,
                               scheduler=scheduler, steps=4)
        assert (result.info["sampler_name"], result.info["scheduler"]) == (name, label)
        assert (f"Schedule type: {label}" in result.info["infotexts"][0]) == (label != "Automatic")
    names = [s["name"] for s in webui.get_schedulers()]
    assert names[:3] == ["automatic", "uniform", "karras"] and len(names) == 12


def test_hires_fix_and_variation_seeds(webui):
    result = webui.txt2img(prompt=PROMPT, seed=5, width=64, height=64, steps=4, enable_hr=True, hr_scale=2,
                           hr_upscaler="Latent", hr_second_pass_steps=3, denoising_strength=0.6)
    assert result.images[0].size == (128, 128)
    extra = result.info["extra_generation_params"]
    assert extra["Hires upscale"] == "2" and extra["Hires steps"] == "3" and extra["Hires upscaler"] == "Latent"
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    varied = webui.txt2img(prompt=PROMPT, seed=5, width=128, height=128, steps=4, subseed=77,
                           subseed_strength=0.3)
    assert "Variation seed: 77" in varied.info["infotexts"][0]
    assert {m["name"] for m in webui.get_latent_upscale_modes()} >= {"Latent", "Latent (nearest-exact)"}
    assert "Lanczos" in {u["name"] for u in webui.get_upscalers()}


def test_hires_fix_with_refiner_and_the_hires_refiner_pass_option(webui):
    """`hires_fix_refiner_pass` is an option (GET/POST /options, or a request's override_settings), as A1111's
    "Hires fix: which pass to enable refiner for"; the infotext names it when it is not "second pass"."""
    payload = {"prompt": PROMPT, "seed": 5, "width": 64, "height": 64, "steps": 4, "enable_hr": True, "hr_scale": 2,
               "hr_second_pass_steps": 2, "denoising_strength": 0.6, "refiner_checkpoint": "demo-refiner",
               "refiner_switch_at": 0.6}
    assert webui.get_options()["hires_fix_refiner_pass"] == "second pass"
    default = webui.custom_post("txt2img", payload, baseurl=True)
    assert default.images[0].size == (128, 128)
    infotext = default.info["infotexts"][0]
    assert "Refiner: demo-refiner" in infotext and "Hires refiner" not in infotext
    try:
        webui.set_options({"hires_fix_refiner_pass": "both passes"})
        assert webui.get_options()["hires_fix_refiner_pass"] == "both passes"
        both = webui.custom_post("txt2img", payload, baseurl=True)
        assert both.info["extra_generation_params"]["Hires refiner"] == "both passes"
        override = {**payload, "override_settings": {"hires_fix_refiner_pass": "first pass"}}
        first = webui.custom_post("txt2img", override, baseurl=True)
        assert "Hires refiner: first pass, Refiner: demo-refiner" in first.info["infotexts"][0]
    finally:
        webui.set_options({"hires_fix_refiner_pass": "second pass"})
    pixels = [np.asarray(r.images[0].convert("RGB"), dtype=int) for r in (default, both, first)]
    assert np.abs(pixels[0] - pixels[1]).max() > 0 and np.abs(pixels[1] - pixels[2]).max() > 0


def test_png_info_reads_our_parameters(webui):
    result = webui.txt2img(prompt=PROMPT, seed=21, width=128, height=128)
    info = webui.png_info(result.images[0])
    assert info.info.startswith(PROMPT) and "Seed: 21" in info.info  # webuiapi puts the text in .info


def test_aaa1111_strict_shapes(strict):
    from aaa1111.types.toimg import IMG2IMG, TXT2IMG

    out = strict.txt2img(TXT2IMG(prompt=PROMPT, steps=6, width=128, height=128, seed=4, sampler_name="Euler"))
    assert out.info["all_seeds"] == [4] and out.images[0].size == (128, 128)
    image, _ = square_scene()  # a PIL image without `parameters`: aaa1111 sends it as lossless WEBP
    out = strict.img2img(IMG2IMG(prompt="a green triangle", init_images=[image], steps=6, width=128, height=128,
                                 denoising_strength=0.5, seed=4))
    assert out.images[0].size == (128, 128)
    assert [m.model_name for m in strict.sd_models()][:2] == ["demo", "demo-refiner"]
    assert any(s.name == "Euler a" for s in strict.samplers())
    assert strict.scripts().txt2img == []
    assert strict.memory().ram["total"] > 0
    progress = strict.progress()
    assert progress.current_image is None and progress.progress == 0
    assert strict.png_info(out.images[0]).info.startswith("a green triangle")
    assert strict.get_options()["sd_model_checkpoint"] == "demo"
    assert isinstance(strict.cmd_flags(), dict)


def test_progress_preview_and_interrupt(start_server):
    server = start_server()
    host, port = _host_port(server.url)
    webui = webuiapi.WebUIApi(host=host, port=port, sampler="Euler", steps=150)
    results = {}

    def generate():
        results["out"] = webui.txt2img(prompt=PROMPT, seed=8, width=128, height=128)

    thread = threading.Thread(target=generate)
    thread.start()
    seen = None
    with server.client() as client:
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = client.get("/sdapi/v1/progress").json()
            assert set(progress) == PROGRESS_KEYS
            if progress["current_image"] and progress["state"]["sampling_step"] >= 2:
                seen = progress
                break
            time.sleep(0.02)
        assert seen is not None, "no preview while the job ran"
        assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 150 and seen["eta_relative"] >= 0
        preview = Image.open(__import__("io").BytesIO(__import__("base64").b64decode(seen["current_image"])))
        assert preview.size == (128, 128)
        assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        webui.interrupt()
        thread.join(60)
    out = results["out"]
    # interrupted: the images come back, denoised as far as the job got
    assert len(out.images) == 1 and out.info["interrupted"] is True


def test_options_switch_the_model_by_title(start_server, tmp_path):
    from sdxl.tiny import write_tiny_checkpoint

    models = tmp_path / "models"
    models.mkdir()
    write_tiny_checkpoint(models / "tiny-sdxl", seed=0)
    server = start_server(models_dir=models)
    host, port = _host_port(server.url)
    webui = webuiapi.WebUIApi(host=host, port=port, steps=2)
    titles = [m["title"] for m in webui.get_sd_models()]
    assert "tiny-sdxl" in titles
    webui.util_set_model("tiny-sdxl")
    assert webui.get_options()["sd_model_checkpoint"] == "tiny-sdxl"
    result = webui.txt2img(prompt=PROMPT, seed=1, width=64, height=64)
    assert result.info["sd_model_name"] == "tiny-sdxl" and "Model: tiny-sdxl" in result.info["infotexts"][0]
