"""Every error path of the processors, IP-Adapter layers and loaders, the CLIP image parts and the new model options:
each says what is wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from ip_adapter_fixtures import image_projection, ip_adapter_state_dict, write_file
from reference import unet_kwargs

import sdxl
from sdxl.loading.ip_adapter import image_projection_from_state_dict, read_ip_adapter_file
from sdxl.models.attention import Attention, FeedForward
from sdxl.models.attention_processor import FusedAttnProcessor2_0
from sdxl.models.ip_adapter import IPAdapterAttnProcessor2_0, IPAdapterFaceIDPlusImageProjection, downsample_mask
from sdxl.pipelines.denoise import guidance_scale_embedding


@pytest.fixture(scope="module")
def unet():
    return sdxl.UNet2DConditionModel(**unet_kwargs("base")).eval()


def test_processor_errors(unet):
    attn = Attention(8, heads=2, dim_head=4)
    attn.set_processor(FusedAttnProcessor2_0())
    with pytest.raises(RuntimeError, match="call fuse_qkv_projections\\(\\) first"):
        attn(torch.zeros(1, 3, 8))

    class Custom:
        def __call__(self, attn, x, context=None):
            return x

    layer = Attention(8, heads=2, dim_head=4)
    layer.set_processor(Custom())
    model = torch.nn.Module()
    model.layer = layer
    from sdxl.models.attention_processor import AttentionProcessorsMixin

    class Holder(AttentionProcessorsMixin, torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

    with pytest.raises(ValueError, match="cannot replace the processors \\['Custom'\\]"):
        Holder().set_default_attn_processor()
    with pytest.raises(ValueError, match="FeedForward activation 'relu' is not supported"):
        FeedForward(8, activation="relu")


def test_ip_attention_processor_errors():
    proc = IPAdapterAttnProcessor2_0(8, 6, num_tokens=[4, 4], scale=1.0)
    attn = Attention(8, heads=2, dim_head=4, cross_attention_dim=6)
    with pytest.raises(ValueError, match="needs image embeddings: pass `ip_adapter_image`"):
        proc(attn, torch.zeros(1, 3, 8), torch.zeros(1, 5, 6))
    with pytest.raises(ValueError, match="`scale` needs one entry per IP-Adapter \\(2\\)"):
        IPAdapterAttnProcessor2_0(8, 6, num_tokens=[4, 4], scale=[1.0])
    tokens = [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 4, 6)]
    context = (torch.zeros(1, 5, 6), tokens)
    from sdxl.models.attention_processor import IPAdapterContext

    with pytest.raises(ValueError, match="1 ip_adapter_masks were given for 2 IP-Adapters"):
        proc(attn, torch.zeros(1, 4, 8), IPAdapterContext(*context, [torch.ones(1, 1, 2, 2)]))
    with pytest.raises(ValueError, match="shape \\(1, num_images_for_adapter, height, width\\)"):
        proc(attn, torch.zeros(1, 4, 8), IPAdapterContext(*context, [torch.ones(2, 2), None]))
    with pytest.raises(ValueError, match="IP-Adapter 0: 2 masks for 1 images"):
        proc(attn, torch.zeros(1, 4, 8), IPAdapterContext(*context, [torch.ones(1, 2, 2, 2), None]))
    proc.scale = [[1.0, 0.5], 1.0]
    with pytest.raises(ValueError, match="IP-Adapter 0: 1 masks for 2 scales"):
        proc(attn, torch.zeros(1, 4, 8), IPAdapterContext(*context, [torch.ones(1, 1, 2, 2), None]))
    with pytest.warns(UserWarning, match="aspect ratio of the IP-Adapter mask"):
        assert downsample_mask(torch.ones(1, 4, 4), 2, 7, 3).shape == (2, 7, 3)  # a 3x2 grid for 7 tokens
    resampler = IPAdapterFaceIDPlusImageProjection(embed_dims=8, output_dims=8, hidden_dims=8, id_embeddings_dim=4,
                                                   depth=1, dim_head=4, heads=2)  # fmt: skip
    with pytest.raises(ValueError, match="needs the CLIP image features"):
        resampler(torch.zeros(1, 4))


def test_ip_adapter_loading_errors(unet, tmp_path):
    sd = ip_adapter_state_dict(unet, "base")
    with pytest.raises(ValueError, match="do not match ImageProjection: missing \\['norm.bias'\\]"):
        image_projection_from_state_dict({k: v for k, v in sd["image_proj"].items() if k != "norm.bias"})
    wrong = {k: v[:, :5] for k, v in sd["ip_adapter"].items()}  # the to_k_ip of a UNet with another text width
    with pytest.raises(ValueError, match="do not fit this UNet"):
        unet._load_ip_adapter_weights({"image_proj": sd["image_proj"], "ip_adapter": wrong})
    from safetensors.torch import save_file

    save_file({"unrelated.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not an IP-Adapter file"):
        read_ip_adapter_file(tmp_path / "other.safetensors")
    path = write_file(sd, tmp_path / "ok.safetensors")
    assert set(read_ip_adapter_file(path)["image_proj"]) == set(image_projection("base", 64))
    lora = {
        "image_proj": sd["image_proj"],
        "ip_adapter": {**sd["ip_adapter"], "1.to_k_lora.down.weight": torch.zeros(1)},
    }
    with pytest.raises(ValueError, match="carries LoRA weights, which sdxl does not apply yet"):
        unet._load_ip_adapter_loras([lora])


def test_model_option_errors(unet, tmp_path):
    with pytest.raises(TypeError, match="save_pretrained got unsupported arguments \\['max_shard_size'\\]"):
        unet.save_pretrained(tmp_path, max_shard_size="1GB")
    with pytest.raises(ValueError, match="guidance weights must be a 1-D tensor"):
        guidance_scale_embedding(torch.zeros(2, 1), 16)
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        sdxl.CLIPVisionConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by num_attention_heads=4"):
        sdxl.CLIPVisionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face cache"):
        sdxl.CLIPTokenizer.from_pretrained("no-such-org/no-such-tokenizer", local_files_only=True)


def test_image_processor_errors():
    with pytest.raises(ValueError, match="size \\{'longest_edge': 3\\}: pass an int"):
        sdxl.CLIPImageProcessor(size={"longest_edge": 3})
    processor = sdxl.CLIPImageProcessor(size=8, crop_size=8)
    with pytest.raises(ValueError, match="return_tensors='tf': use 'pt' or 'np'"):
        processor(torch.zeros(3, 8, 8), return_tensors="tf")
    with pytest.raises(ValueError, match="must be \\(H, W, C\\) or \\(C, H, W\\)"):
        processor([torch.zeros(8, 8)])
    with pytest.raises(TypeError, match="unexpected arguments \\['padding'\\]"):
        processor(torch.zeros(3, 8, 8), padding=True)
