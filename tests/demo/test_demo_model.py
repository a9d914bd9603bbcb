"""The shipped demo model (sdxl/data/demo) shows the whole pipeline working: prompts are followed, micro-conditioning
changes the images as the SDXL paper says, and the refiner, img2img and inpainting do what they should on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl.demo import shapes
from sdxl.demo.checker import read_image
from sdxl.demo.configs import IMAGE_SIZE
from sdxl.loading import hub

STEPS = 20  # fewer than the pipelines' 50: the checker reads the same attributes, in less CI time


@pytest.fixture(scope="module")
def base():
    from sdxl import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refiner(base):
    from sdxl import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        "demo-refiner", vae=base.vae, text_encoder_2=base.text_encoder_2
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _uint8(images: np.ndarray) -> list[np.ndarray]:
    return [(im * 255).round().astype(np.uint8) for im in images]


def _generators(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def test_the_shipped_weights_fit_the_size_budget():
    files = [p for p in hub.DEMO_ROOT.rglob("*") if p.is_file() and p.suffix == ".safetensors"]
    assert len(files) >= 7  # base: unet, vae, two text encoders; refiner: unet, vae, text_encoder_2
    assert sum(p.stat().st_size for p in files) <= 30_000_000


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_the_readme_command_draws_the_prompt(seed, tmp_path, monkeypatch):
    from sdxl import cli
    from sdxl.cli import generate

    monkeypatch.setattr(generate.random, "randrange", lambda _: seed)  # the command picks a random seed: pin a few
    out = tmp_path / "out.png"
    assert cli.main(["generate", "a red circle on a blue background", "--model", "demo", "-o", str(out)]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    reading = read_image(image)
    assert (reading.colour, reading.background, reading.shape) == ("red", "blue", "circle")


def _high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the luma: what blur removes."""
    luma = images @ np.array([0.299, 0.587, 0.114])
    lap = 4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1] - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
    return float((lap**2).mean())


def _prompts(n: int) -> list[str]:
    triples = shapes.training_triples()
    rng = np.random.default_rng(0)
    return [shapes.tidy(f"a {c} {s} on a {b} background")
            for c, s, b in (triples[i] for i in rng.choice(len(triples), n, replace=False))]  # fmt: skip


def test_a_small_original_size_gives_blurrier_images(base):
    """SDXL's size conditioning: the model learnt that upscaled small originals are blurry, so asking for a smaller
    original_size gives less high-frequency energy, the less the smaller (50 prompts, same seeds)."""
    prompts = _prompts(50)
    energy = []
    for original_size in (None, (64, 64), (24, 24)):
        images = base(prompts, num_inference_steps=STEPS, generator=_generators(50), output_type="np",
                      original_size=original_size).images  # fmt: skip
        energy.append(_high_frequency_energy(images))
    assert energy[0] > energy[1] > energy[2]


def test_a_crop_offset_cuts_the_shape_at_the_top_left_edge(base):
    """SDXL's crop conditioning: training crops of a larger canvas cut shapes at the window's edge, so a large
    crops_coords_top_left draws shapes cut at the top or left edge, where (0, 0) draws them whole."""
    from sdxl.demo.shapes import COLOURS

    prompts = _prompts(20)

    def cut_at_top_left(crop: tuple[int, int]) -> float:
        images = base(prompts, num_inference_steps=STEPS, generator=_generators(20), output_type="np",
                      crops_coords_top_left=crop).images  # fmt: skip
        cut = []
        for image, prompt in zip(_uint8(images), prompts):
            words = prompt.split()
            fg, bg = (np.array(COLOURS[words[i]], dtype=np.float32) for i in (1, 5))
            shape = ((image - fg) ** 2).sum(-1) < ((image - bg) ** 2).sum(-1)
            cut.append(bool(shape[0].any() or shape[:, 0].any()))
        return float(np.mean(cut))

    assert cut_at_top_left((0, 0)) == 0.0
    assert cut_at_top_left((48, 48)) >= 0.3  # measured: 0.6


def test_the_refiner_takes_over_the_last_steps(base, refiner):
    prompts = _prompts(10)
    latents = base(prompts, num_inference_steps=STEPS, denoising_end=0.8, generator=_generators(10),
                   output_type="latent").images  # fmt: skip
    refined = refiner(prompts, image=latents, num_inference_steps=STEPS, denoising_start=0.8,
                      generator=_generators(10), output_type="np").images  # fmt: skip
    expected = [p.split()[1:6:4] for p in prompts]  # (colour, background)
    read = [[r.colour, r.background] for r in map(read_image, _uint8(refined))]
    assert sum(e == r for e, r in zip(expected, read)) >= 8


def _scene_image(colour: str, shape: str, background: str, position: str = "center") -> Image.Image:
    centre = {"center": 0.5, "top left": 0.3}[position]
    scene = shapes.Scene(colour, shape, background, "small", position, centre, centre, 0.4 if centre != 0.5 else 0.45)
    pixels = (shapes.render(scene, IMAGE_SIZE) + 1) * 127.5
    return Image.fromarray(pixels.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())


def test_img2img_keeps_the_input_at_low_strength_and_its_layout_at_half(base):
    from sdxl import StableDiffusionXLImg2ImgPipeline

    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(base)
    image = _scene_image("red", "square", "blue", position="top left")
    prompt = "a yellow circle on a green background"  # says nothing of the position
    readings = []
    for strength in (0.05, 0.5):
        out = img2img(prompt, image=image, strength=strength, num_inference_steps=STEPS,
                      generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
        readings.append(read_image(_uint8(out)[0]).to_dict())
    assert readings[0] == {"colour": "red", "shape": "square", "background": "blue", "position": "top left"}
    assert readings[1] == {"colour": "yellow", "shape": "circle", "background": "green", "position": "top left"}


def test_inpainting_recolours_the_masked_shape_and_keeps_the_rest(base):
    from sdxl import StableDiffusionXLInpaintPipeline
    from sdxl.demo.checker import nearest_colour

    inpaint = StableDiffusionXLInpaintPipeline.from_pipe(base)
    image = _scene_image("red", "square", "blue")
    q = IMAGE_SIZE // 8  # one latent pixel
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    def run(mask: np.ndarray) -> np.ndarray:
        out = inpaint(
            "a yellow square on a blue background",
            image=image,
            mask_image=Image.fromarray(mask),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return _uint8(out.images)[0].astype(np.float32)

    round_trip = run(mask)  # nothing masked: the input after the pipeline's own VAE round trip
    mask[2 * q : 6 * q, 2 * q : 6 * q] = 255  # the square (0.45 of the canvas) plus a little
    result = run(mask)
    assert nearest_colour(np.median(result[3 * q : 5 * q, 3 * q : 5 * q].reshape(-1, 3), axis=0)) == "yellow"
    # Outside the mask (one latent pixel of margin) the latents are the input's; the decoder's GroupNorm statistics
    # and mid-block attention span the whole image, so recolouring a quarter of it moves far pixels by a few levels.
    outside = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    outside[q : 7 * q, q : 7 * q] = False
    diff = np.abs(result - round_trip).max(axis=-1)[outside]
    assert (diff <= 2).mean() >= 0.9 and diff.max() <= 8  # measured: 95.9% within 2/255, max 7/255
