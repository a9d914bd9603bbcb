"""A few training steps write a diffusers-layout folder that sdxl and diffusers load and run to the same image."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sdxl.demo import configs
from sdxl.demo.train import Settings, lr_at, main, train

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    log = train(out, seed=0, settings=Settings.quick())
    return out, log


def test_writes_both_folders_in_diffusers_layout(trained):
    out, log = trained
    for name, parts in (("base", ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")),
                        ("refiner", ("unet", "vae", "text_encoder_2", "tokenizer_2"))):  # fmt: skip
        index = json.loads((out / name / "model_index.json").read_text())
        for part in parts:
            assert index[part][1] is not None and (out / name / part).is_dir(), (name, part)
        assert (out / name / "scheduler" / "scheduler_config.json").is_file()
    refiner = json.loads((out / "refiner" / "model_index.json").read_text())
    assert refiner["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and refiner["requires_aesthetics_score"]
    assert refiner["text_encoder"] == [None, None]
    assert [row["step"] for row in log["base"]["losses"]] == [1, 2, 3]
    assert json.loads((out / "train_log.json").read_text())["seed"] == 0


def test_weights_are_fp16_and_fit_the_size_budget(trained):
    out, _ = trained
    from safetensors import safe_open

    with safe_open(str(out / "base" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (safe_open is not iterable)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "train_log.json")
    assert total <= 30_000_000


def test_configs_have_the_sdxl_structure(trained):
    out, _ = trained
    unet = json.loads((out / "base" / "unet" / "config.json").read_text())
    assert unet["down_block_types"][0] == "DownBlock2D" and unet["addition_embed_type"] == "text_time"
    assert unet["sample_size"] * 8 == configs.IMAGE_SIZE
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + configs.TEXT_WIDTH
    refiner = json.loads((out / "refiner" / "unet" / "config.json").read_text())
    assert refiner["projection_class_embeddings_input_dim"] == 5 * refiner["addition_time_embed_dim"] + 32
    assert len(refiner["block_out_channels"]) == 4
    vae = json.loads((out / "base" / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4 and vae["scaling_factor"] != 1.0
    te = json.loads((out / "base" / "text_encoder_2" / "config.json").read_text())
    assert te["vocab_size"] == 49408


def test_same_seed_same_weights(trained, tmp_path):
    out, _ = trained
    train(tmp_path / "again", seed=0, settings=Settings.quick())
    for sub in ("base/unet/diffusion_pytorch_model.safetensors", "refiner/unet/diffusion_pytorch_model.safetensors",
                "base/text_encoder/model.safetensors"):  # fmt: skip
        assert (out / sub).read_bytes() == (tmp_path / "again" / sub).read_bytes(), sub


def test_sdxl_and_diffusers_give_the_same_image(trained):
    import diffusers

    from sdxl import StableDiffusionXLPipeline

    out, _ = trained
    ours = StableDiffusionXLPipeline.from_pretrained(out / "base")
    # the folder stores fp16 weights: diffusers needs the dtype named to run them in fp32 on CPU
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(out / "base", torch_dtype=torch.float32)
    kw = {"num_inference_steps": 3, "output_type": "np"}
    a = ours(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images
    assert a.shape == (1, configs.IMAGE_SIZE, configs.IMAGE_SIZE, 3)  # default size: the training size
    assert np.abs(a - b).max() <= 2 / 255


def test_refuses_a_nonempty_output_folder(trained):
    out, _ = trained
    with pytest.raises(FileExistsError, match="not empty"):
        main(["--out", str(out), "--quick"])


def test_refuses_cuda_without_a_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="--device cuda"):
        train(tmp_path / "x", device="cuda", settings=Settings.quick())


def test_learning_rate_schedule_is_step_based():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_an_empty_base_pool_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"base_pool must be at least 1 sample \(--base-pool\), got 0"):
        train(tmp_path / "run", settings=dataclasses.replace(Settings.quick(), base_pool=0))
    assert not (tmp_path / "run").exists()


def test_training_leaves_denormals_on_for_the_rest_of_the_process(trained):
    """Flush-to-zero speeds training up but is process-wide: it is switched off again when training ends."""
    assert (torch.tensor([1e-39]) * torch.tensor([1.0])).item() != 0.0
