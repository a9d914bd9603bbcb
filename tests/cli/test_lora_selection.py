"""Choosing LoRAs by name: <lora:NAME:WEIGHT> prompt tags, --lora/--lora-dir, the runner, and `Lora hashes`."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sdxl
from sdxl.cli import main
from sdxl.cli.generate import parse_lora_flag
from sdxl.loading.lora_files import a1111_lora_hash, find_lora
from sdxl.metadata import format_parameters, parse_lora_hashes, parse_parameters, read_parameters
from sdxl.params import GenerationParams
from sdxl.prompts.lora_tags import extract_lora_tags
from sdxl.runner import Runner

sys.path.insert(0, str(Path(__file__).parents[1]))
import lora_files


@pytest.fixture(scope="module")
def setup(tiny_base, tmp_path_factory):
    """(checkpoint folder, LoRA folder with style.safetensors and sub/other.safetensors, our pipeline)."""
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0])
    pipe.set_progress_bar_config(disable=True)
    loras = tmp_path_factory.mktemp("loras")
    save_file(lora_files.kohya_lora(pipe.unet, {"lora_te1": pipe.text_encoder}), loras / "style.safetensors")
    (loras / "sub").mkdir()
    save_file(lora_files.peft_lora({"unet": pipe.unet}), loras / "sub" / "other.safetensors")
    return tiny_base[0], loras, pipe


def test_extract_lora_tags():
    assert extract_lora_tags("a cat <lora:style:0.6>, <lora:b>") == ("a cat , ", [("style", 0.6), ("b", 1.0)])
    assert extract_lora_tags("plain") == ("plain", [])
    with pytest.raises(ValueError, match="not a number"):
        extract_lora_tags("<lora:style:strong>")
    with pytest.raises(ValueError, match="per-encoder weights"):
        extract_lora_tags("<lora:style:0.5:1>")


def test_parse_lora_flag():
    assert parse_lora_flag("style") == ("style", 1.0)
    assert parse_lora_flag("dir/style.safetensors:0.5") == ("dir/style.safetensors", 0.5)
    assert parse_lora_flag("C:\\loras\\x.safetensors") == ("C:\\loras\\x.safetensors", 1.0)


def test_find_lora_and_hash(setup, tmp_path):
    _, loras, _ = setup
    assert find_lora("other", loras) == loras / "sub" / "other.safetensors"
    assert find_lora(str(loras / "style.safetensors"), None) == loras / "style.safetensors"
    with pytest.raises(FileNotFoundError, match=r"no LoRA named 'nope' .* it has: other, style"):
        find_lora("nope", loras)
    with pytest.raises(FileNotFoundError, match="no LoRA folder"):
        find_lora("style", None)
    data = (loras / "style.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert a1111_lora_hash(loras / "style.safetensors") == hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def run_pipe(pipe, prompt, **kwargs):
    return pipe(prompt=prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


def test_prompt_tags_activate_loaded_adapters_for_one_call(setup):
    _, loras, pipe = setup
    try:
        pipe.load_lora_weights(loras / "style.safetensors", adapter_name="style")
        pipe.set_adapters("style", 0.5)
        expected = run_pipe(pipe, "a cat ", prompt_syntax="a1111")
        pipe.disable_lora()
        pipe.enable_lora()
        pipe.set_adapters([], [])
        plain = run_pipe(pipe, "a cat ", prompt_syntax="a1111")
        tagged = run_pipe(pipe, "a cat <lora:style:0.5>", prompt_syntax="a1111")
        np.testing.assert_array_equal(tagged, expected)
        assert np.abs(tagged - plain).max() > 2 / 255
        assert pipe.get_active_adapters() == []  # the tag's choice lasted one call
        with pytest.raises(ValueError, match=r"asks for LoRA \['nope'\]"):
            run_pipe(pipe, "a cat <lora:nope:1>", prompt_syntax="a1111")
    finally:
        pipe.unload_lora_weights()


def test_runner_reads_tags_and_flags_and_records_hashes(setup):
    folder, loras, _ = setup
    runner = Runner("cpu", lora_dir=loras)
    common = {"steps": 2, "width": 64, "height": 64, "model": str(folder), "sampler": "Euler", "seed": 1}
    plain = runner.run(GenerationParams("a cat", **common))[0]
    tagged = runner.run(GenerationParams("a cat <lora:style:0.8>", prompt_syntax="a1111",
                                         loras=(("other", 0.5),), **common))[0]
    style_hash = a1111_lora_hash(loras / "style.safetensors")
    other_hash = a1111_lora_hash(loras / "sub" / "other.safetensors")
    assert tagged.params.lora_hashes == (("other", other_hash), ("style", style_hash))
    assert np.abs(np.asarray(tagged.image, dtype=int) - np.asarray(plain.image, dtype=int)).max() > 2
    again = runner.run(GenerationParams("a cat", **common))[0]  # no LoRA asked: none applied
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(plain.image))
    assert again.params.lora_hashes == ()


def test_metadata_lora_hashes_round_trip():
    params = GenerationParams("a cat <lora:style:0.8>", lora_hashes=(("style", "0123456789ab"), ("b", "ffffffffffff")))
    text = format_parameters(params)
    assert 'Lora hashes: "style: 0123456789ab, b: ffffffffffff"' in text
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "a cat <lora:style:0.8>"
    assert parse_lora_hashes(parsed["Lora hashes"]) == [("style", "0123456789ab"), ("b", "ffffffffffff")]


def test_command_lora_flags(setup, tmp_path):
    folder, loras, _ = setup
    out = tmp_path / "out.png"
    rc = main(["generate", "a cat <lora:style:0.7>", "--model", str(folder), "-o", str(out), "--steps", "2",
               "--width", "64", "--height", "64", "--seed", "3", "--prompt-syntax", "a1111", "--lora-dir", str(loras),
               "--lora", str(loras / "sub" / "other.safetensors") + ":0.4", "-q"])
    assert rc == 0
    params = read_parameters(out)
    assert params["Prompt"] == "a cat <lora:style:0.7>"
    assert [name for name, _ in parse_lora_hashes(params["Lora hashes"])] == ["other", "style"]
