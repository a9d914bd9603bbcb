"""load_pipeline_components on a stand-in pipeline folder: class mapping, overrides, variants, tokenizers, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from loading_standins import TinyConfig, TinyModel, TinyScheduler, random_state, write_model_folder

from sdxl.loading import registry
from sdxl.loading.diffusers import load_pipeline_components
from sdxl.loading.weights import PickleRefusedError

INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.42.1",
    "force_zeros_for_empty_prompt": True,
    "feature_extractor": [None, None],
    "unet": ["diffusers", "TinyModel"],
    "vae": ["diffusers", "TinyModel"],
    "scheduler": ["diffusers", "TinyScheduler"],
}


@pytest.fixture(autouse=True)
def standin_registry(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "TinyModel", registry.ModelEntry("loading_standins", "TinyConfig"))
    monkeypatch.setitem(registry.SCHEDULERS, "TinyScheduler", "loading_standins")


@pytest.fixture(scope="module")
def state():
    with torch.device("meta"):
        model = TinyModel(TinyConfig())
    return random_state(model)


def make_pipeline(folder, state, *, index=INDEX, variants=(None, None)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    for name, variant in zip(("unet", "vae"), variants):
        write_model_folder(folder / name, {"width": 4}, state, variant=variant)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 1000}))
    return folder


def test_components_and_index(tmp_path, state):
    comps, index = load_pipeline_components(make_pipeline(tmp_path, state), torch_dtype=torch.bfloat16)
    assert index == INDEX
    assert set(comps) == {"feature_extractor", "unet", "vae", "scheduler"}
    assert comps["feature_extractor"] is None
    for name in ("unet", "vae"):
        assert isinstance(comps[name], TinyModel) and comps[name].dtype == torch.bfloat16
        assert all(torch.equal(comps[name].state_dict()[k], v.bfloat16()) for k, v in state.items())
    assert isinstance(comps["scheduler"], TinyScheduler) and comps["scheduler"].config["num_train_timesteps"] == 1000


def test_overrides_are_not_loaded(tmp_path, state):
    folder = make_pipeline(tmp_path, state)
    # A component the user replaces is never read: break its files to prove it.
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    mine = torch.nn.Linear(1, 1)
    comps, _ = load_pipeline_components(folder, overrides={"vae": mine, "scheduler": None, "extra": 3})
    assert comps["vae"] is mine and comps["scheduler"] is None and comps["extra"] == 3
    assert isinstance(comps["unet"], TinyModel)


def test_unsupported_class_names_component_and_class(tmp_path, state):
    folder = make_pipeline(tmp_path, state, index={**INDEX, "image_encoder": ["transformers", "CLIPVisionModel"]})
    with pytest.raises(
        ValueError, match=r"component 'image_encoder' is transformers.CLIPVisionModel.*image_encoder=None"
    ):
        load_pipeline_components(folder)
    comps, _ = load_pipeline_components(folder, overrides={"image_encoder": None})
    assert comps["image_encoder"] is None


def test_unknown_scheduler_name(tmp_path, state):
    folder = make_pipeline(tmp_path, state, index={**INDEX, "scheduler": ["diffusers", "MadeUpScheduler"]})
    with pytest.raises(ValueError, match="'scheduler' is diffusers.MadeUpScheduler"):
        load_pipeline_components(folder)


def test_variant_falls_back_per_component(tmp_path, state, caplog):
    folder = make_pipeline(tmp_path, state, variants=("fp16", None))
    with caplog.at_level(logging.INFO, logger="sdxl.loading.diffusers"):
        comps, _ = load_pipeline_components(folder, variant="fp16")
    assert isinstance(comps["unet"], TinyModel) and isinstance(comps["vae"], TinyModel)
    assert "has no fp16 files" in caplog.text and "vae" in caplog.text


def test_variant_absent_everywhere(tmp_path, state):
    folder = make_pipeline(tmp_path, state)
    with pytest.raises(ValueError, match=r"the model files of the `variant=fp16`.* no component .* unet, vae"):
        load_pipeline_components(folder, variant="fp16")


def test_missing_model_index(tmp_path, state):
    write_model_folder(tmp_path, {"width": 4}, state)
    with pytest.raises(FileNotFoundError, match=r"No model_index.json .* single model"):
        load_pipeline_components(tmp_path)


def test_missing_scheduler_config(tmp_path, state):
    folder = make_pipeline(tmp_path, state)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_pipeline_components(folder)


def test_bad_scheduler_config_names_the_file(tmp_path, state):
    folder = make_pipeline(tmp_path, state)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(ValueError, match="scheduler_config.json: num_train_timesteps missing"):
        load_pipeline_components(folder)


def test_pickle_component_is_refused(tmp_path, state):
    folder = make_pipeline(tmp_path, state)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="unet"):
        load_pipeline_components(folder, use_safetensors=False)


# ---- tokenizers ---------------------------------------------------------------------------------------------------


def _with_tokenizers(tmp_path, state):
    pytest.importorskip("sdxl.tokenizer")
    index = {
        **INDEX,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizerFast"],
    }
    return make_pipeline(tmp_path, state, index=index)


def test_tokenizers_from_vocab_files(tmp_path, state, clip_vocab_dir):
    from sdxl.tokenizer import CLIPTokenizer

    folder = _with_tokenizers(tmp_path, state)
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        (folder / name).mkdir()
        for f in ("vocab.json", "merges.txt"):
            (folder / name / f).write_bytes((clip_vocab_dir / f).read_bytes())
        (folder / name / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    comps, _ = load_pipeline_components(folder)
    assert isinstance(comps["tokenizer"], CLIPTokenizer) and isinstance(comps["tokenizer_2"], CLIPTokenizer)
    assert comps["tokenizer"].pad_token == "<|endoftext|>" and comps["tokenizer_2"].pad_token == "!"


def test_tokenizer_without_files_falls_back_to_the_shipped_vocabulary(tmp_path, state, caplog, clip_vocab_dir):
    from sdxl.tokenizer import CLIPTokenizer

    folder = _with_tokenizers(tmp_path, state)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer_2").mkdir()
    (folder / "tokenizer_2" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!"}))
    with caplog.at_level(logging.WARNING, logger="sdxl.loading.diffusers"):
        comps, _ = load_pipeline_components(folder)
    assert caplog.text.count("shipped with sdxl") == 2
    assert comps["tokenizer"].pad_token == "<|endoftext|>" and comps["tokenizer_2"].pad_token == "!"
    reference = CLIPTokenizer.from_pretrained(clip_vocab_dir)
    text = "a photo of an astronaut riding a horse"
    assert comps["tokenizer"](text).input_ids == reference(text).input_ids
