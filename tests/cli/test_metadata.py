"""The A1111 `parameters` chunk: what we write is what A1111-style parsers read back."""

from __future__ import annotations

import pytest
from PIL import Image

from sdxl.metadata import format_parameters, parse_parameters, read_parameters, save_png
from sdxl.params import GenerationParams, find_sampler


def _params(**kw) -> GenerationParams:
    base = dict(prompt="a cat, on a beach", negative_prompt="blurry", steps=30, sampler="DPM++ 2M Karras",
                guidance_scale=7.5, seed=42, width=1344, height=768, model="sdxl-base")
    return GenerationParams(**(base | kw))


def test_format_matches_a1111_layout():
    text = format_parameters(_params())
    assert text == (
        "a cat, on a beach\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 1344x768, Model: sdxl-base"
    )


@pytest.mark.parametrize(
    "params",
    [
        _params(),
        _params(negative_prompt=""),
        _params(prompt="line one\nline two", negative_prompt="neg one\nneg two"),
        _params(prompt_2="Van Gogh painting, starry: night"),
        _params(prompt=""),
        _params(guidance_scale=5.0),
    ],
)
def test_round_trip(params):
    parsed = parse_parameters(format_parameters(params))
    assert parsed["Prompt"] == params.prompt
    assert parsed["Negative prompt"] == params.negative_prompt
    assert parsed["Steps"] == str(params.steps)
    assert parsed["Sampler"] == params.sampler
    assert float(parsed["CFG scale"]) == params.guidance_scale
    assert parsed["Seed"] == str(params.seed)
    assert parsed["Size"] == f"{params.width}x{params.height}"
    assert parsed.get("Prompt 2") == params.prompt_2


def test_png_chunk_round_trip(tmp_path):
    path = tmp_path / "x.png"
    save_png(Image.new("RGB", (8, 8)), path, _params())
    with Image.open(path) as image:
        assert image.info["parameters"] == format_parameters(_params())
    assert read_parameters(path)["Seed"] == "42"


def test_png_without_chunk_reads_empty(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert read_parameters(path) == {}


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="unknown sampler 'Euler z'.*'Euler'.*'DPM\\+\\+ 2M Karras'"):
        find_sampler("Euler z")


def test_sampler_lookup_is_case_insensitive():
    assert find_sampler("dpm++ 2m karras").options["use_karras_sigmas"] is True


def test_schedule_type_variation_seed_and_hires_fix_as_a1111_writes_them():
    text = format_parameters(
        _params(sampler="DPM++ 2M", schedule="Karras", subseed=123, subseed_strength=0.25, hires_scale=1.5,
                hires_steps=10, hires_upscaler="Latent (bicubic)", denoising_strength=0.5)
    )
    assert text.split("\n")[-1] == (
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 1344x768, "
        "Model: sdxl-base, Variation seed: 123, Variation seed strength: 0.25, Denoising strength: 0.5, "
        "Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent (bicubic)"
    )
    parsed = parse_parameters(text)
    assert (parsed["Schedule type"], parsed["Hires upscaler"], parsed["Variation seed"]) == (
        "Karras", "Latent (bicubic)", "123"
    )
    # hires steps 0 means "as many as Steps": A1111 leaves the key out; no variation key at strength 0
    plain = format_parameters(_params(hires_scale=2.0, denoising_strength=0.7, subseed=5))
    assert "Hires steps" not in plain and "Variation seed" not in plain and "Hires upscale: 2," in plain


def test_hires_refiner_pass_as_a1111_writes_it(tmp_path):
    """"Hires refiner" only with the hires fix and a refiner, and only when not A1111's default "second pass"."""
    refined = {"hires_scale": 2.0, "denoising_strength": 0.5, "refiner": "sdxl-refiner", "refiner_switch_at": 0.8}
    text = format_parameters(_params(**refined, hires_refiner_pass="both passes"))
    assert text.split("\n")[-1].endswith(
        "Hires upscale: 2, Hires upscaler: Latent, Hires refiner: both passes, Refiner: sdxl-refiner, "
        "Refiner switch at: 0.8"
    )
    path = tmp_path / "hires.png"
    save_png(Image.new("RGB", (8, 8)), path, _params(**refined, hires_refiner_pass="first pass"))
    assert read_parameters(path)["Hires refiner"] == "first pass"
    assert "Hires refiner" not in format_parameters(_params(**refined))  # "second pass"
    no_refiner = {**refined, "refiner": "", "refiner_switch_at": None}
    assert "Hires refiner" not in format_parameters(_params(**no_refiner, hires_refiner_pass="both passes"))
    no_hires = {"refiner": "sdxl-refiner", "refiner_switch_at": 0.8}
    assert "Hires refiner" not in format_parameters(_params(**no_hires, hires_refiner_pass="both passes"))
