"""load_model on stand-in ConfiguredModels: file choice (variants, shards), dtype, meta build, and every error."""

from __future__ import annotations

import json

import pytest
import torch
from loading_standins import (
    TinyClip,
    TinyClipWithProjection,
    TinyConfig,
    TinyModel,
    random_state,
    write_model_folder,
)
from safetensors.torch import save_file

from sdxl.loading.diffusers import load_model, weight_file_names
from sdxl.loading.weights import PickleRefusedError

CONFIG = {"_class_name": "TinyModel", "_diffusers_version": "0.42.1", "width": 6, "depth": 3}


@pytest.fixture(scope="module")
def state():
    with torch.device("meta"):
        model = TinyModel(TinyConfig(width=6, depth=3))
    return random_state(model)


def _assert_loaded(model, state, dtype=torch.float32):
    assert isinstance(model, TinyModel)
    assert model.config == TinyConfig(width=6, depth=3)
    sd = model.state_dict()
    assert sd.keys() == state.keys()
    for k, v in state.items():
        assert sd[k].dtype == dtype, k
        assert torch.equal(sd[k], v.to(dtype)), k
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_plain_folder(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    model = load_model(TinyModel, tmp_path)
    _assert_loaded(model, state)
    assert model.built_on == torch.device("meta"), "the model must be built on meta (no random init)"
    assert model.device == torch.device("cpu")


def test_from_pretrained_with_subfolder(tmp_path, state):
    write_model_folder(tmp_path / "unet", CONFIG, state)
    _assert_loaded(TinyModel.from_pretrained(tmp_path, subfolder="unet"), state)
    _assert_loaded(TinyModel.from_pretrained(str(tmp_path / "unet"), torch_dtype=torch.float16), state, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_dtype(tmp_path, state, dtype):
    write_model_folder(tmp_path, CONFIG, {k: v.half() for k, v in state.items()}, variant="fp16")
    model = load_model(TinyModel, tmp_path, torch_dtype=dtype, variant="fp16")
    _assert_loaded(model, {k: v.half() for k, v in state.items()}, dtype)


def test_default_dtype_is_float32_as_diffusers(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, {k: v.half() for k, v in state.items()})
    assert load_model(TinyModel, tmp_path).dtype == torch.float32


def test_same_dtype_keeps_the_mapped_tensors(tmp_path, state):
    """No cast needed: parameters are the file's memory-mapped tensors (adjacent, in file order)."""
    write_model_folder(tmp_path, CONFIG, state)
    model = load_model(TinyModel, tmp_path)
    from sdxl.loading.weights import read_header

    header, _ = read_header(tmp_path / "diffusion_pytorch_model.safetensors")
    sd = model.state_dict()
    base = sd["norm.weight"].data_ptr() - header["norm.weight"]["data_offsets"][0]
    assert all(sd[k].data_ptr() - base == header[k]["data_offsets"][0] for k in header)


@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("stem", ["diffusion_pytorch_model", "model"])
def test_sharded(tmp_path, state, variant, stem):
    write_model_folder(tmp_path, CONFIG, state, variant=variant, shards=3, stem=stem)
    _assert_loaded(load_model(TinyModel, tmp_path, variant=variant), state)


def test_legacy_sharded_variant_index(tmp_path, state):
    """diffusers still reads `diffusion_pytorch_model.safetensors.fp16.index.json` (old variant index name)."""
    write_model_folder(tmp_path, CONFIG, state, variant="fp16", shards=2)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").rename(
        tmp_path / "diffusion_pytorch_model.safetensors.fp16.index.json"
    )
    _assert_loaded(load_model(TinyModel, tmp_path, variant="fp16"), state)


def test_variant_is_chosen_over_plain(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    other = {k: v + 1 for k, v in state.items()}
    save_file(other, str(tmp_path / "diffusion_pytorch_model.fp16.safetensors"))
    _assert_loaded(load_model(TinyModel, tmp_path, variant="fp16"), other)
    _assert_loaded(load_model(TinyModel, tmp_path), state)


def test_weight_file_names_follow_diffusers():
    assert weight_file_names("fp16") == [
        "diffusion_pytorch_model.safetensors.index.fp16.json",
        "diffusion_pytorch_model.safetensors.fp16.index.json",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.safetensors.index.fp16.json",
        "model.safetensors.fp16.index.json",
        "model.fp16.safetensors",
    ]


# ---- CLIP key spellings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["official", "transformers5"])
def test_clip_spellings(tmp_path, spelling):
    with torch.device("meta"):
        model = TinyClipWithProjection(TinyConfig(width=6))
    state = random_state(model)
    if spelling == "official":
        file_state = {**state, "text_model.embeddings.position_ids": torch.arange(77)[None]}
    else:  # transformers >= 5.6 drops the prefix of CLIPTextModel (the projection model keeps it)
        file_state = {k.removeprefix("text_model."): v for k, v in state.items()}
    write_model_folder(tmp_path, {"width": 6}, file_state, stem="model")
    loaded = load_model(TinyClipWithProjection, tmp_path).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_clip_unprefixed_position_ids_are_dropped(tmp_path):
    with torch.device("meta"):
        model = TinyClip(TinyConfig(width=6))
    state = random_state(model)
    file_state = {k.removeprefix("text_model."): v for k, v in state.items()}
    file_state["embeddings.position_ids"] = torch.arange(77)[None]
    write_model_folder(tmp_path, {"width": 6}, file_state, stem="model")
    assert load_model(TinyClip, tmp_path).state_dict().keys() == state.keys()


# ---- errors -------------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(TinyModel, tmp_path / "nowhere")


def test_missing_subfolder(tmp_path, state):
    write_model_folder(tmp_path / "unet", CONFIG, state)
    with pytest.raises(FileNotFoundError, match="no subfolder 'vae'.*unet"):
        load_model(TinyModel, tmp_path, "vae")


def test_missing_config(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"No config.json in {tmp_path}"):
        load_model(TinyModel, tmp_path)


def test_pipeline_folder_without_subfolder_says_which(tmp_path, state):
    write_model_folder(tmp_path / "unet", CONFIG, state)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"pass subfolder=.*unet"):
        load_model(TinyModel, tmp_path)


def test_bad_config_json(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(TinyModel, tmp_path)


def test_config_error_names_the_file(tmp_path, state):
    write_model_folder(tmp_path, {**CONFIG, "attention_type": "gated"}, state)
    with pytest.raises(ValueError, match=r"config.json: unknown config keys \['attention_type'\]"):
        load_model(TinyModel, tmp_path)


def test_missing_weights_lists_expected_names(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_model(TinyModel, tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert "diffusion_pytorch_model.safetensors" in msg and "model.safetensors.index.json" in msg
    assert "It has: config.json" in msg


def test_wrong_variant_lists_what_exists(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    with pytest.raises(FileNotFoundError) as e:
        load_model(TinyModel, tmp_path, variant="fp16")
    msg = str(e.value)
    assert "variant='fp16'" in msg and "diffusion_pytorch_model.fp16.safetensors" in msg
    assert "It has: config.json, diffusion_pytorch_model.safetensors" in msg and "variant=None" in msg


@pytest.mark.parametrize("use_safetensors", [None, True, False])
def test_only_a_pickle_is_refused(tmp_path, state, use_safetensors):
    write_model_folder(tmp_path, CONFIG, state)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="diffusion_pytorch_model.bin is a PyTorch pickle"):
        load_model(TinyModel, tmp_path, use_safetensors=use_safetensors)


def test_pickle_named_safetensors_is_refused(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    torch.save(state, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(PickleRefusedError, match="only .safetensors"):
        load_model(TinyModel, tmp_path)


def test_truncated_weights(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{path} is not a valid safetensors file"):
        load_model(TinyModel, tmp_path)


def _error(tmp_path, file_state) -> str:
    write_model_folder(tmp_path, CONFIG, file_state)
    with pytest.raises(ValueError) as e:
        load_model(TinyModel, tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "diffusion_pytorch_model.safetensors") in msg
    return msg


def test_missing_key(tmp_path, state):
    msg = _error(tmp_path, {k: v for k, v in state.items() if k != "layers.1.bias"})
    assert "1 key(s) missing (layers.1.bias)" in msg


def test_unexpected_key(tmp_path, state):
    msg = _error(tmp_path, {**state, "layers.9.weight": torch.zeros(1)})
    assert "1 key(s) unexpected (layers.9.weight)" in msg


def test_shape_mismatch(tmp_path, state):
    msg = _error(tmp_path, {**state, "norm.weight": torch.zeros(7)})
    assert "1 key(s) with a shape mismatch (norm.weight: file [7] vs model [6])" in msg


def test_many_problems_are_one_error_with_counts(tmp_path, state):
    bad = {f"extra.{i}": torch.zeros(1) for i in range(8)}
    msg = _error(tmp_path, {**{k: v for k, v in state.items() if not k.startswith("layers.0")}, **bad})
    assert "2 key(s) missing (layers.0.weight, layers.0.bias)" in msg
    assert "8 key(s) unexpected (extra.0, extra.1, extra.2, extra.3, extra.4, ...)" in msg


def test_sharded_missing_shard(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state, shards=2)
    shard = tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_model(TinyModel, tmp_path)


@pytest.mark.parametrize("dtype", ["float16", torch.int8, 16])
def test_bad_torch_dtype(tmp_path, state, dtype):
    write_model_folder(tmp_path, CONFIG, state)
    with pytest.raises(TypeError, match="torch_dtype"):
        load_model(TinyModel, tmp_path, torch_dtype=dtype)


def test_model_without_a_config_class(tmp_path, state):
    class Bare(TinyModel):
        config_class = None

    write_model_folder(tmp_path, CONFIG, state)
    with pytest.raises(TypeError, match="config dataclass"):
        load_model(Bare, tmp_path)


def test_non_persistent_buffer_is_a_model_bug(tmp_path, state):
    class WithBuffer(TinyModel):
        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("ids", torch.arange(3), persistent=False)

    write_model_folder(tmp_path, CONFIG, state)
    with pytest.raises(TypeError, match=r"outside its state dict.*'ids'"):
        load_model(WithBuffer, tmp_path)


def test_config_of_another_registered_class(tmp_path):
    """A VAE config.json given to the UNet class is named as such (the registry knows both names)."""
    pytest.importorskip("sdxl.models.unet")
    from sdxl.models.unet import UNet2DConditionModel

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="describes a AutoencoderKL, not a UNet2DConditionModel"):
        load_model(UNet2DConditionModel, tmp_path)


def test_dtype_is_the_newer_spelling_of_torch_dtype(tmp_path, state):
    write_model_folder(tmp_path, CONFIG, state)
    assert load_model(TinyModel, tmp_path, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="once"):
        load_model(TinyModel, tmp_path, dtype=torch.float16, torch_dtype=torch.float16)


def test_sharded_pickle_is_refused(tmp_path, state):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    torch.save(state, tmp_path / "pytorch_model-00001-of-00001.bin")
    weight_map = dict.fromkeys(state, "pytorch_model-00001-of-00001.bin")
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(PickleRefusedError, match="pytorch_model-00001-of-00001.bin is a PyTorch pickle"):
        load_model(TinyModel, tmp_path)
