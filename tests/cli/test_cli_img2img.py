"""`sdxl img2img`, `sdxl inpaint` and `--refiner`: the command's images equal diffusers' on the same folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl.cli import main
from sdxl.metadata import read_parameters

SIZE = 64


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-modes")
    assert main(["tiny-checkpoint", str(root / "base")]) == 0
    assert main(["tiny-checkpoint", str(root / "refiner"), "--refiner", "--seed", "1"]) == 0
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(image).save(root / "input.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def _reference(cls_name, folder, **kwargs):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=torch.float32, add_watermarker=False,
                                                         **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_png_equals(path, expected):
    ours = np.asarray(Image.open(path), dtype=np.int16)
    assert np.abs(ours - np.asarray(expected, dtype=np.int16)).max() <= 2


def test_img2img_equals_diffusers(folders, tmp_path):
    out = tmp_path / "i2i.png"
    assert main(["img2img", "a blue square", "--model", str(folders / "base"), "--image", str(folders / "input.png"),
                 "--strength", "0.6", "--steps", "4", "--seed", "5", "-o", str(out), "-q"]) == 0
    ref = _reference("StableDiffusionXLImg2ImgPipeline", folders / "base")
    expected = ref("a blue square", image=Image.open(folders / "input.png").convert("RGB"), strength=0.6,
                   num_inference_steps=4, generator=[torch.Generator("cpu").manual_seed(5)]).images[0]
    _assert_png_equals(out, expected)
    params = read_parameters(out)
    assert params["Denoising strength"] == "0.6" and params["Size"] == f"{SIZE}x{SIZE}"


def test_inpaint_equals_diffusers(folders, tmp_path):
    out = tmp_path / "inpaint.png"
    assert main(["inpaint", "a red circle", "--model", str(folders / "base"), "--image", str(folders / "input.png"),
                 "--mask", str(folders / "mask.png"), "--steps", "3", "--seed", "2", "-o", str(out), "-q",
                 "--width", str(SIZE), "--height", str(SIZE)]) == 0
    ref = _reference("StableDiffusionXLInpaintPipeline", folders / "base")
    expected = ref("a red circle", image=Image.open(folders / "input.png").convert("RGB"),
                   mask_image=Image.open(folders / "mask.png").convert("RGB"), num_inference_steps=3, width=SIZE,
                   height=SIZE, guidance_scale=5.0, generator=[torch.Generator("cpu").manual_seed(2)]).images[0]
    _assert_png_equals(out, expected)
    assert read_parameters(out)["Denoising strength"] == "0.9999"


def test_generate_with_refiner_equals_diffusers_ensemble(folders, tmp_path):
    out = tmp_path / "refined.png"
    assert main(["generate", "a green star", "--model", str(folders / "base"), "--refiner", str(folders / "refiner"),
                 "--refiner-start", "0.7", "--steps", "5", "--seed", "9", "--width", str(SIZE), "--height",
                 str(SIZE), "-o", str(out), "-q"]) == 0
    base = _reference("StableDiffusionXLPipeline", folders / "base")
    refiner = _reference("StableDiffusionXLImg2ImgPipeline", folders / "refiner", text_encoder_2=base.text_encoder_2,
                         vae=base.vae, scheduler=base.scheduler)
    generator = [torch.Generator("cpu").manual_seed(9)]
    latents = base("a green star", num_inference_steps=5, width=SIZE, height=SIZE, denoising_end=0.7,
                   output_type="latent", generator=generator).images
    expected = refiner("a green star", image=latents, num_inference_steps=5, denoising_start=0.7,
                       generator=generator).images[0]
    _assert_png_equals(out, expected)
    params = read_parameters(out)
    assert (params["Refiner"], params["Refiner switch at"]) == ("refiner", "0.7")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["img2img", "--image", "{input}", "--strength", "1.5"], "--strength must be between 0 and 1"),
        (["img2img", "--image", "{missing}"], "no such file"),
        (["inpaint", "--image", "{input}", "--mask", "{missing}"], "no such file"),
        (["inpaint", "--image", "{input}", "--mask", "{mask}", "--mask-blur", "-1"], "--mask-blur"),
        (["inpaint", "--image", "{input}", "--mask", "{mask}", "--padding-mask-crop", "8", "--refiner", "{base}"],
         "cannot be combined"),
        (["generate", "--refiner", "{base}", "--refiner-start", "1"], "--refiner-start must lie strictly"),
    ],
)
def test_bad_arguments_are_one_line_errors(folders, tmp_path, capsys, extra, message):
    names = {"input": folders / "input.png", "mask": folders / "mask.png", "missing": tmp_path / "nope.png",
             "base": folders / "base"}
    command, *flags = [a.format(**names) for a in extra]
    rc = main([command, "a cat", "--model", str(folders / "base"), *flags, "-o", str(tmp_path / "x.png"), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "x.png").exists()


def test_inpaint_with_refiner_equals_the_guides_handoff(folders, tmp_path):
    out = tmp_path / "inpaint-refined.png"
    assert main(["inpaint", "a red circle", "--model", str(folders / "base"), "--image", str(folders / "input.png"),
                 "--mask", str(folders / "mask.png"), "--refiner", str(folders / "refiner"), "--refiner-start", "0.7",
                 "--steps", "4", "--seed", "4", "--width", str(SIZE), "--height", str(SIZE), "-o", str(out),
                 "-q"]) == 0
    base = _reference("StableDiffusionXLInpaintPipeline", folders / "base")
    refiner = _reference("StableDiffusionXLInpaintPipeline", folders / "refiner", text_encoder_2=base.text_encoder_2,
                         vae=base.vae, scheduler=base.scheduler)
    image = Image.open(folders / "input.png").convert("RGB")
    mask = Image.open(folders / "mask.png").convert("RGB")
    generator = [torch.Generator("cpu").manual_seed(4)]
    common = dict(num_inference_steps=4, width=SIZE, height=SIZE, guidance_scale=5.0, generator=generator)
    latents = base("a red circle", image=image, mask_image=mask, denoising_end=0.7, output_type="latent",
                   **common).images
    expected = refiner("a red circle", image=latents, mask_image=mask, denoising_start=0.7, **common).images[0]
    _assert_png_equals(out, expected)
