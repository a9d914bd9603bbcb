"""LoRA key maps and adapter math: LyCORIS LoHa/LoKr deltas against their formulas, fuse/unfuse, and the errors."""

from __future__ import annotations

import lora_files
import pytest
import torch
from safetensors.torch import save_file

import sdxl
from sdxl.models.lora import LoraConv2d, LoraLinear


@pytest.fixture(scope="module")
def pipe(tiny_base):
    p = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def clean(pipe):
    yield pipe
    pipe.unload_lora_weights()


def expected_delta(sd: dict, name: str, kind: str, shape: torch.Size) -> torch.Tensor:
    """LyCORIS's formulas, written out: LoHa (w1a w1b) * (w2a w2b) * alpha / r; LoKr kron(w1, w2a w2b) * alpha / r."""
    alpha = float(sd[f"{name}.alpha"])
    if kind == "loha":
        rank = sd[f"{name}.hada_w1_b"].shape[0]
        delta = (sd[f"{name}.hada_w1_a"] @ sd[f"{name}.hada_w1_b"]) * (sd[f"{name}.hada_w2_a"] @ sd[f"{name}.hada_w2_b"])
    else:
        rank = sd[f"{name}.lokr_w2_b"].shape[0]
        delta = torch.kron(sd[f"{name}.lokr_w1"], sd[f"{name}.lokr_w2_a"] @ sd[f"{name}.lokr_w2_b"])
    return delta.reshape(shape) * alpha / rank


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_layers_follow_the_formula(clean, kind):
    pipe = clean
    sd = lora_files.lycoris(pipe.unet, kind)
    names = lora_files.sgm_names(pipe.unet)
    pipe.load_lora_weights(sd, adapter_name=kind)
    pipe.set_adapters(kind, 0.5)
    checked = 0
    for path, layer in lora_files.targets(pipe.unet, ("to_q", "to_out.0", "conv1")).items():
        assert isinstance(layer, (LoraLinear, LoraConv2d))
        delta = expected_delta(sd, "lora_unet_" + names[path].replace(".", "_"), kind, layer.weight.shape)
        if isinstance(layer, LoraConv2d):
            x = torch.randn(1, layer.in_channels, 8, 8)
            want = layer._conv_forward(x, layer.weight + 0.5 * delta, layer.bias)
        else:
            x = torch.randn(3, layer.in_features)
            want = torch.nn.functional.linear(x, layer.weight + 0.5 * delta, layer.bias)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 4
    unfused = pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    pipe.fuse_lora()
    fused = pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert abs(fused - unfused).max() < 1e-4


def test_unmatched_keys_are_named(clean):
    sd = lora_files.kohya_lora(clean.unet, {})
    sd["lora_unet_input_blocks_99_1_proj_in.lora_down.weight"] = torch.zeros(4, 32)
    sd["lora_unet_input_blocks_99_1_proj_in.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(ValueError, match=r"2 LoRA keys match no layer .*input_blocks_99_1_proj_in.lora_down"):
        clean.load_lora_weights(sd)
    peft = {"unet.nowhere.to_q.lora_A.weight": torch.zeros(4, 32), "unet.nowhere.to_q.lora_B.weight": torch.zeros(32, 4)}
    with pytest.raises(ValueError, match=r"match no layer .*unet.nowhere.to_q.lora_A.weight"):
        clean.load_lora_weights(peft)
    assert clean.get_list_adapters() == {}  # nothing was attached


def test_text_encoder_lora_on_a_pipeline_without_one(clean):
    bare = type(clean)(**{**clean.components, "text_encoder": None, "tokenizer": None})
    sd = lora_files.kohya_lora(clean.unet, {"lora_te1": clean.text_encoder})
    with pytest.raises(ValueError, match=r"match no layer of this pipeline \(unet, text_encoder_2\): .*lora_te1_"):
        bare.load_lora_weights(sd)


@pytest.mark.parametrize(
    "key, match",
    [
        ("lora_unet_middle_block_1_proj_in.dora_scale", "DoRA"),
        ("lora_unet_middle_block_1_proj_in.lora_mid.weight", "lora_mid"),
        ("lora_unet_middle_block_1_proj_in.something", "unknown LoRA key"),
        ("unet.mid_block.attentions.0.proj_in.lora_B.bias", "bias"),
    ],
)
def test_unsupported_parts_are_errors(clean, key, match):
    sd = lora_files.kohya_lora(clean.unet, {}) if key.startswith("lora_") else lora_files.peft_lora({"unet": clean.unet})
    sd[key] = torch.zeros(4)
    with pytest.raises(ValueError, match=match):
        clean.load_lora_weights(sd)


def test_shape_mismatch_names_the_layer(clean):
    sd = lora_files.peft_lora({"unet": clean.unet})
    key = next(k for k in sd if k.endswith("lora_A.weight"))
    sd[key] = torch.zeros(4, 7)
    with pytest.raises(ValueError, match=r"do not fit the layer's weight"):
        clean.load_lora_weights(sd)
    assert not any(isinstance(m, LoraLinear) for m in clean.unet.modules())


def test_mixed_and_incomplete_files(clean):
    kohya = lora_files.kohya_lora(clean.unet, {})
    with pytest.raises(ValueError, match="mixes kohya keys"):
        clean.load_lora_weights({**kohya, "unet.x.lora_A.weight": torch.zeros(1)})
    key = next(k for k in kohya if k.endswith("lora_up.weight"))
    with pytest.raises(ValueError, match="is incomplete"):
        clean.load_lora_weights({k: v for k, v in kohya.items() if k != key})
    with pytest.raises(ValueError, match="holds no tensors"):
        clean.load_lora_weights({})


def test_pickles_are_refused_by_content(clean, tmp_path):
    path = tmp_path / "lora.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="pickle"):
        clean.load_lora_weights(path)


def test_folder_and_weight_name(clean, tmp_path):
    save_file(lora_files.peft_lora({"unet": clean.unet}), tmp_path / "pytorch_lora_weights.safetensors")
    clean.load_lora_weights(tmp_path)
    save_file(lora_files.peft_lora({"unet": clean.unet}), tmp_path / "other.safetensors")
    clean.load_lora_weights(tmp_path, weight_name="other.safetensors", adapter_name="other")
    assert clean.get_list_adapters() == {"unet": ["default_0", "other"]}
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        clean.load_lora_weights(tmp_path, weight_name="missing.safetensors")


def test_adapter_name_and_weight_errors(clean):
    sd = lora_files.peft_lora({"unet": clean.unet})
    clean.load_lora_weights(sd, adapter_name="a")
    with pytest.raises(ValueError, match="already in use"):
        clean.load_lora_weights(sd, adapter_name="a")
    with pytest.raises(ValueError, match=r"\['b'\] are not loaded"):
        clean.set_adapters(["a", "b"])
    with pytest.raises(ValueError, match="one weight per adapter"):
        clean.set_adapters(["a"], [1.0, 2.0])
    with pytest.raises(TypeError, match="must be a number"):
        clean.set_adapters("a", "strong")
    with pytest.raises(ValueError, match="per-block UNet weights"):
        clean.set_adapters("a", {"unet": 1.0, "down": 0.5})
    with pytest.raises(ValueError, match=r"\['vae'\] are not known"):
        clean.fuse_lora(components=["vae"])
    with pytest.raises(ValueError, match=r"\['zz'\] are not loaded"):
        clean.delete_adapters("zz")
    with pytest.raises(TypeError, match="unexpected keyword"):
        clean.load_lora_weights(sd, hotswap=True)
