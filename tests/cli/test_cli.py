"""The `sdxl` command end to end on a tiny checkpoint it writes itself, and its errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl.cli import main
from sdxl.metadata import read_parameters


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tiny-sdxl"
    assert main(["tiny-checkpoint", str(folder)]) == 0
    return folder


def test_generate_writes_png_with_a1111_parameters(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(["generate", "a red circle on a blue background", "--model", str(tiny_checkpoint), "-o", str(out),
               "--steps", "3", "--seed", "7", "--negative", "blurry", "--quiet"])
    assert rc == 0
    with Image.open(out) as image:
        assert image.size == (256, 256)  # the UNet's sample_size (32) times the VAE's 8x
    params = read_parameters(out)
    assert params["Prompt"] == "a red circle on a blue background"
    assert params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["CFG scale"], params["Seed"]) == ("3", "Euler", "5", "7")
    assert params["Size"] == "256x256" and params["Model"] == "tiny-sdxl"
    assert "seed 7" in capsys.readouterr().out


def test_command_image_equals_diffusers_on_the_same_folder(tiny_checkpoint, tmp_path):
    """diffusers loads the checkpoint we wrote, and gives the command's image for the same seed and settings."""
    import diffusers

    out = tmp_path / "ours.png"
    args = ["generate", "a small green star", "--model", str(tiny_checkpoint), "-o", str(out), "--steps", "4",
            "--seed", "3", "--width", "64", "--height", "96", "--guidance", "7.5", "--scheduler", "DPM++ 2M", "-q"]
    assert main(args) == 0
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32,
                                                              add_watermarker=False)
    ref.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    expected = ref("a small green star", num_inference_steps=4, guidance_scale=7.5, width=64, height=96,
                   generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
    ours = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(ours - np.asarray(expected, dtype=np.int16)).max() <= 2


def test_fast_flag_turns_the_fast_path_on_and_keeps_the_image(tiny_checkpoint, tmp_path, monkeypatch):
    """`--fast` calls pipe.optimize() on the loaded model; the PNG stays within 2.5/255 of the plain command's."""
    from sdxl.pipelines.fast import FastPathMixin

    paths = []
    optimize = FastPathMixin.optimize
    monkeypatch.setattr(FastPathMixin, "optimize", lambda pipe, **kw: paths.append(optimize(pipe, **kw)) or paths[-1])
    images = {}
    for flags in ([], ["--fast"]):
        out = tmp_path / f"fast{len(flags)}.png"
        assert main(["generate", "a blue square", "--model", str(tiny_checkpoint), "--steps", "3", "--width", "64",
                     "--height", "64", "--seed", "4", "-q", "-o", str(out), *flags]) == 0
        images[len(flags)] = np.asarray(Image.open(out), dtype=np.int16)
    assert len(paths) == 1 and paths[0].fuse_projections and paths[0].channels_last
    assert np.abs(images[1] - images[0]).max() <= 2.5


def test_num_images_uses_consecutive_seeds_and_numbered_files(tiny_checkpoint, tmp_path):
    out = tmp_path / "batch.png"
    common = ["--model", str(tiny_checkpoint), "--steps", "2", "--width", "64", "--height", "64", "-q"]
    assert main(["generate", "a blue square", *common, "-o", str(out), "--num-images", "2", "--seed", "10"]) == 0
    single = tmp_path / "single.png"
    assert main(["generate", "a blue square", *common, "-o", str(single), "--seed", "11"]) == 0
    second = tmp_path / "batch-1.png"
    assert read_parameters(tmp_path / "batch-0.png")["Seed"] == "10"
    assert read_parameters(second)["Seed"] == "11"
    # same seed, same image, alone or in a batch
    diff = np.abs(np.asarray(Image.open(second), dtype=np.int16) - np.asarray(Image.open(single), dtype=np.int16))
    assert diff.max() <= 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "x.jpg"], "must end in .png"),
        (["--width", "100"], "--width must be a positive multiple of 8"),
        (["--height", "-8"], "--height must be a positive multiple of 8"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--scheduler", "Euler z"], "unknown sampler 'Euler z'"),
        (["--scheduler", "LCM", "--steps", "60"], "--steps must be at most 50 with the LCM sampler"),
        (["--scheduler", "LCM", "--steps", "4", "--hires-scale", "2", "--hires-steps", "30", "--hires-strength", "0.5"],
         "--hires-steps / denoising strength gives the hires pass a schedule of 60"),
        (["-o", "/no/such/folder/x.png"], "folder for --output does not exist"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
    ],
)
def test_usage_errors_are_one_line(tiny_checkpoint, tmp_path, capsys, extra, message):
    args = ["generate", "x", "--model", str(tiny_checkpoint), "-o", str(tmp_path / "o.png"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdxl: error: ") and message in err
    assert "Traceback" not in err


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdxl: error: ") and "nothing-here" in err


def test_tiny_checkpoint_refuses_a_non_empty_folder(tiny_checkpoint, capsys):
    assert main(["tiny-checkpoint", str(tiny_checkpoint)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "generate", "x", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "o.png")])


def test_help_and_no_command(capsys):
    assert main([]) == 2
    assert "generate" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "sdxl.cli", "generate", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--model", "--negative", "--prompt-2", "--steps", "--guidance", "--seed", "--width", "--height",
                 "--num-images", "--scheduler", "--dtype", "--device"):
        assert flag in result.stdout


def test_schedulers_lists_sampler_names(capsys):
    assert main(["schedulers"]) == 0
    out = capsys.readouterr().out
    assert "DPM++ 2M Karras" in out and "EulerDiscreteScheduler" in out


def test_prompt_syntax_and_long_prompts_reach_the_pipeline(tiny_checkpoint, tmp_path):
    """--prompt-syntax a1111 weights `(word:1.5)`; --no-long-prompts truncates a prompt past 77 tokens."""
    common = ["--model", str(tiny_checkpoint), "--steps", "2", "--width", "64", "--height", "64", "--seed", "1", "-q"]

    def image(name, prompt, *flags):
        out = tmp_path / f"{name}.png"
        assert main(["generate", prompt, *common, "-o", str(out), *flags]) == 0
        return np.asarray(Image.open(out), dtype=np.int16)

    plain = image("plain", "a (red:1.5) circle")
    weighted = image("weighted", "a (red:1.5) circle", "--prompt-syntax", "a1111")
    assert np.abs(plain - weighted).max() > 2
    long_prompt = "a red circle, " * 30 + "on a green background"
    windows = image("long", long_prompt)
    truncated = image("truncated", long_prompt, "--no-long-prompts")
    assert np.abs(windows - truncated).max() > 2


def test_generate_hires_fix_schedule_and_variation_flags(tiny_checkpoint, tmp_path):
    out = tmp_path / "hires.png"
    args = ["generate", "a red circle", "--model", str(tiny_checkpoint), "-o", str(out), "--steps", "2", "--seed",
            "4", "--width", "64", "--height", "64", "--schedule", "Align Your Steps", "--hires-scale", "1.5",
            "--hires-strength", "0.5", "--hires-steps", "2", "--hires-upscaler", "Lanczos", "--subseed", "9",
            "--subseed-strength", "0.2", "-q"]
    assert main(args) == 0
    with Image.open(out) as image:
        assert image.size == (96, 96)
    params = read_parameters(out)
    assert params["Size"] == "64x64" and params["Schedule type"] == "Align Your Steps"
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == ("1.5", "2", "Lanczos")
    assert (params["Denoising strength"], params["Variation seed"], params["Variation seed strength"]) == (
        "0.5", "9", "0.2"
    )


def test_generate_hires_refiner_pass_flag(tiny_base, tiny_refiner, tmp_path):
    """--hires-refiner-pass reaches the run (the image is the runner's for that choice) and the PNG metadata."""
    from sdxl.params import GenerationParams
    from sdxl.runner import Runner

    out = tmp_path / "refined.png"
    args = ["generate", "a red circle", "--model", str(tiny_base[0]), "-o", str(out), "--steps", "3", "--seed", "4",
            "--width", "64", "--height", "64", "--scheduler", "Euler", "--refiner", str(tiny_refiner[0]),
            "--refiner-start", "0.6", "--hires-scale", "1.5", "--hires-strength", "0.75", "--hires-steps", "3",
            "--hires-refiner-pass", "both passes", "-q"]
    assert main(args) == 0
    params = read_parameters(out)
    assert (params["Hires refiner"], params["Refiner switch at"]) == ("both passes", "0.6")
    fields = {"steps": 3, "seed": 4, "width": 64, "height": 64, "model": str(tiny_base[0]), "sampler": "Euler",
              "refiner": str(tiny_refiner[0]), "refiner_switch_at": 0.6, "hires_scale": 1.5, "hires_steps": 3,
              "denoising_strength": 0.75}
    runner = Runner("cpu", torch.float32)
    with Image.open(out) as image:
        saved = np.asarray(image.convert("RGB"), dtype=np.int16)
    for choice, same in (("both passes", True), ("second pass", False)):
        (result,) = runner.run(GenerationParams("a red circle", **fields, hires_refiner_pass=choice))
        assert bool(np.abs(np.asarray(result.image, dtype=np.int16) - saved).max() == 0) is same


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--schedule", "Karas"], "unknown schedule type 'Karas'"),
        (["--hires-scale", "2", "--hires-strength", "0"], "needs --hires-strength in (0, 1]"),
        (["--hires-scale", "2", "--hires-upscaler", "ESRGAN"], "unknown hires upscaler 'ESRGAN'"),
        (["--subseed-strength", "2"], "--subseed-strength must be between 0 and 1"),
        (["--scheduler", "DDIM", "--schedule", "Karras"], "DDIMScheduler takes no schedule type"),
    ],
)
def test_sampling_flag_errors(tiny_checkpoint, tmp_path, capsys, extra, message):
    args = ["generate", "x", "--model", str(tiny_checkpoint), "-o", str(tmp_path / "o.png"), "--steps", "1", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdxl: error: ") and message in err
