"""Code written for diffusers' SDXL pipelines runs on ours with the same results: components round trips, optional
components, encode_prompt without a UNet, save/load options, device_map, per-component dtypes, FreeU and fused
projections at pipeline level, cross_attention_kwargs, guidance-embedding (LCM) UNets."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call, load_ours, load_theirs
from reference import unet_kwargs

import sdxl

CLASSES = ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"]


@pytest.mark.parametrize("class_name", CLASSES)
def test_components_round_trip_into_the_constructor(ours, class_name):
    cls = getattr(sdxl, class_name)
    pipe = cls(**ours.components)
    assert pipe.components == ours.components  # the same objects
    again = cls(**pipe.components)
    assert list(again.components) == list(getattr(diffusers, class_name)(**ours.components).components)
    assert cls._optional_components == tuple(getattr(diffusers, class_name)._optional_components)
    assert issubclass(cls, sdxl.IPAdapterMixin) and issubclass(cls, sdxl.StableDiffusionMixin)


def test_encode_prompt_on_a_pipeline_of_text_encoders_only(ours, theirs):
    text_only = {k: (v if "text" in k or "tokenizer" in k else None) for k, v in ours.components.items()}
    pipe = sdxl.StableDiffusionXLPipeline(**text_only)
    assert pipe.unet is None and pipe.vae is None and pipe.device == torch.device("cpu")
    kwargs = {"prompt": "a red cube", "negative_prompt": "blurry", "num_images_per_prompt": 2}
    with torch.no_grad():
        mine = pipe.encode_prompt(**kwargs)
        full = ours.encode_prompt(**kwargs)
        ref = theirs.encode_prompt(**kwargs)
    for a, b, c in zip(mine, full, ref):
        assert torch.equal(a, b)
        assert (a - c).abs().max() <= 1e-5 * c.abs().max()
    # and the embeddings drive a pipeline without text encoders to the full pipeline's image
    no_text = sdxl.StableDiffusionXLPipeline(**{k: (None if "text" in k or "tokenizer" in k else v)
                                                for k, v in ours.components.items()})  # fmt: skip
    no_text.set_progress_bar_config(disable=True)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    embeds = dict(zip(names, pipe.encode_prompt("a red cube")))
    assert_images_match(call(no_text, prompt=None, **embeds), call(ours, prompt="a red cube"))


def test_save_pretrained_options_and_loading_options(ours, tmp_path):
    ours.save_pretrained(tmp_path / "pickle_asked", safe_serialization=False, variant="fp16")
    unet_files = sorted(p.name for p in (tmp_path / "pickle_asked" / "unet").iterdir())
    assert unet_files == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]  # never a pickle
    index = json.loads((tmp_path / "pickle_asked" / "model_index.json").read_text())
    assert index["image_encoder"] == [None, None] and index["feature_extractor"] == [None, None]
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path / "pickle_asked", variant="fp16")
    assert theirs.image_encoder is None
    for device_map in ("cpu", {"": "cpu"}, "balanced", torch.device("cpu")):
        pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tmp_path / "pickle_asked", variant="fp16",
                                                              device_map=device_map)  # fmt: skip
        assert {m.device.type for m in pipe.components.values() if isinstance(m, torch.nn.Module)} == {"cpu"}
    with pytest.raises(ValueError, match="splits a model across devices"):
        sdxl.StableDiffusionXLPipeline.from_pretrained(tmp_path / "pickle_asked", variant="fp16",
                                                       device_map={"unet": "cpu", "vae": "cpu"})  # fmt: skip
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=bf16`"):
        sdxl.StableDiffusionXLPipeline.from_pretrained(tmp_path / "pickle_asked", variant="bf16")
    dtypes = {"unet": torch.bfloat16, "default": torch.float16}
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tmp_path / "pickle_asked", variant="fp16", dtype=dtypes)
    assert {n: m.dtype for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)} == {
        "vae": torch.float16,
        "text_encoder": torch.float16,
        "text_encoder_2": torch.float16,
        "unet": torch.bfloat16,
    }
    with pytest.raises(TypeError, match="save_pretrained got unsupported arguments \\['push_to_hub'\\]"):
        ours.save_pretrained(tmp_path / "x", push_to_hub=True)


def test_model_save_pretrained_and_device_map(ours, tmp_path):
    ours.unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    theirs = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.unet.state_dict().items())
    again = sdxl.UNet2DConditionModel.from_pretrained(tmp_path / "unet", device_map="auto", low_cpu_mem_usage=True)
    assert again.device.type in ("cpu", "cuda", "xpu", "mps") and again.config == ours.unet.config
    with pytest.raises(ValueError, match="either `device` or `device_map`"):
        sdxl.UNet2DConditionModel.from_pretrained(tmp_path / "unet", device="cpu", device_map="cpu")
    with pytest.raises(ValueError, match="is not a device"):
        sdxl.UNet2DConditionModel.from_pretrained(tmp_path / "unet", device_map="everywhere")


def test_freeu_and_fused_projections_match_diffusers(tiny_base):
    theirs, ours = (
        load_theirs("StableDiffusionXLPipeline", tiny_base[0]),
        load_ours("StableDiffusionXLPipeline", tiny_base[0]),
    )
    plain = call(ours)
    for pipe in (theirs, ours):
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.3, b2=1.4)
    freeu = call(ours)
    assert_images_match(freeu, call(theirs))
    assert_changes(freeu, plain)
    for pipe in (theirs, ours):
        pipe.disable_freeu()
        pipe.fuse_qkv_projections()
    assert ours.unet.original_attn_processors is not None and ours.vae.original_attn_processors is not None
    assert_images_match(call(ours), call(theirs))
    assert_images_match(call(ours), plain)
    ours.unfuse_qkv_projections()
    assert_images_match(call(ours), plain)
    no_unet = sdxl.StableDiffusionXLPipeline(**{**ours.components, "unet": None})
    with pytest.raises(ValueError, match="must have `unet` for using FreeU"):
        no_unet.enable_freeu(s1=0.9, s2=0.2, b1=1.3, b2=1.4)


def test_cross_attention_kwargs(ours, theirs):
    plain = call(ours)
    kwargs = {"cross_attention_kwargs": {"scale": 0.5}}  # the LoRA scale: no LoRA loaded, no effect (as diffusers)
    assert_images_match(call(ours, **kwargs), plain)
    assert_images_match(call(ours, **kwargs), call(theirs, **kwargs))
    with pytest.raises(TypeError, match="cross_attention_kwargs keys \\['gligen'\\] are not supported"):
        call(ours, cross_attention_kwargs={"gligen": {}})


def test_guidance_embedding_unet(tiny_base, tmp_path):
    """A guidance-distilled (LCM) UNet reads guidance_scale as `timestep_cond` and runs without CFG."""
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(**unet_kwargs("base"), time_cond_proj_dim=16).save_pretrained(tmp_path)
    theirs = load_theirs("StableDiffusionXLPipeline", tiny_base[0],
                         unet=diffusers.UNet2DConditionModel.from_pretrained(tmp_path))  # fmt: skip
    ours = load_ours(
        "StableDiffusionXLPipeline", tiny_base[0], unet=sdxl.UNet2DConditionModel.from_pretrained(tmp_path)
    )
    assert not ours.do_classifier_free_guidance or ours.guidance_scale <= 1
    w = torch.tensor([0.5, 3.0])
    assert torch.equal(ours.get_guidance_scale_embedding(w, 16), theirs.get_guidance_scale_embedding(w, 16))
    ref = call(theirs, guidance_scale=6.0)
    assert_images_match(call(ours, guidance_scale=6.0), ref)
    assert_changes(ref, call(theirs, guidance_scale=2.0))


def test_encode_vae_image_matches_diffusers(ours, theirs):
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mine = sdxl.StableDiffusionXLInpaintPipeline(**ours.components)._encode_vae_image(
        image, generator=torch.Generator().manual_seed(0)
    )
    ref = diffusers.StableDiffusionXLInpaintPipeline(**theirs.components)._encode_vae_image(
        image, generator=torch.Generator().manual_seed(0)
    )
    assert (mine - ref).abs().max() <= 1e-5 * ref.abs().max()
