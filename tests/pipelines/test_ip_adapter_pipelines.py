"""IP-Adapter on the three SDXL pipelines against diffusers: load_ip_adapter from an h94-style folder (adapter file +
image encoder), ip_adapter_image and ip_adapter_image_embeds, scales (per block too), masks, several adapters,
unload, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from ip_adapter_fixtures import ip_adapter_state_dict, write_file
from pipeline_parity import assert_changes, assert_images_match, call, load_ours, load_theirs
from reference import unet_kwargs

import sdxl

SUB = "sdxl_models"


def _image(seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """An h94/IP-Adapter-like folder: sdxl_models/{ip-adapter_sdxl,ip-adapter-plus_sdxl}.safetensors and
    sdxl_models/image_encoder (a tiny CLIP image encoder saved by transformers)."""
    root = tmp_path_factory.mktemp("ip_adapters")
    torch.manual_seed(0)
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=28, patch_size=14))  # fmt: skip
    encoder.save_pretrained(root / SUB / "image_encoder")
    unet = sdxl.UNet2DConditionModel(**unet_kwargs("base"))  # for the layer order only
    write_file(ip_adapter_state_dict(unet, "base", seed=3), root / SUB / "ip-adapter_sdxl.safetensors")
    write_file(ip_adapter_state_dict(unet, "plus", seed=4), root / SUB / "ip-adapter-plus_sdxl.safetensors")
    return root


def _pair(folder, class_name, weights=("ip-adapter_sdxl.safetensors",), adapters=None):
    theirs, ours = load_theirs(class_name, folder), load_ours(class_name, folder)
    if adapters is not None:
        for pipe in (theirs, ours):
            pipe.load_ip_adapter(adapters, subfolder=SUB, weight_name=list(weights))
    return theirs, ours


@pytest.fixture(scope="module")
def text2img(tiny_base, adapters):
    return _pair(tiny_base[0], "StableDiffusionXLPipeline", adapters=adapters)


def test_load_ip_adapter_adds_encoder_and_processor(text2img):
    theirs, ours = text2img
    assert isinstance(ours.image_encoder, sdxl.CLIPVisionModelWithProjection)
    assert isinstance(ours.feature_extractor, sdxl.CLIPImageProcessor)
    assert ours.feature_extractor.to_dict()["crop_size"] == theirs.feature_extractor.crop_size
    assert list(ours.components) == list(theirs.components)
    assert set(ours.unet.state_dict()) == set(theirs.unet.state_dict())


def test_ip_adapter_image_matches_diffusers(text2img):
    theirs, ours = text2img
    for pipe in (theirs, ours):
        pipe.set_ip_adapter_scale(0.0)
    baseline = call(theirs, ip_adapter_image=_image())
    for pipe in (theirs, ours):
        pipe.set_ip_adapter_scale(1.0)
    ref = call(theirs, ip_adapter_image=_image())
    assert_images_match(call(ours, ip_adapter_image=_image()), ref)
    assert_changes(ref, baseline)
    # precomputed embeddings give the same image, with and without guidance
    embeds = ours.prepare_ip_adapter_image_embeds(_image(), None, torch.device("cpu"), 1, True)
    assert_images_match(call(ours, ip_adapter_image_embeds=embeds), ref)
    single = [e.chunk(2)[1] for e in embeds]
    assert_images_match(call(ours, ip_adapter_image_embeds=single, guidance_scale=1.0),
                        call(theirs, ip_adapter_image_embeds=single, guidance_scale=1.0))  # fmt: skip


@pytest.mark.parametrize(
    "scale",
    [0.4, {"up": {"block_0": [0.0, 1.0, 0.5]}}, {"down": {"block_1": [1.0, 0.0]}, "mid": 0.3}],
    ids=["number", "style-blocks", "layout-blocks"],
)
def test_set_ip_adapter_scale_matches_diffusers(text2img, scale):
    theirs, ours = text2img
    for pipe in (theirs, ours):
        pipe.set_ip_adapter_scale(scale)
    scales = {n: p.scale for n, p in ours.unet.attn_processors.items() if hasattr(p, "scale")}
    assert scales == {n: p.scale for n, p in theirs.unet.attn_processors.items() if hasattr(p, "scale")}
    assert_images_match(call(ours, ip_adapter_image=_image(1)), call(theirs, ip_adapter_image=_image(1)))


def test_two_adapters_with_masks(tiny_base, adapters):
    theirs, ours = _pair(tiny_base[0], "StableDiffusionXLPipeline",
                         ("ip-adapter_sdxl.safetensors", "ip-adapter-plus_sdxl.safetensors"), adapters)  # fmt: skip
    for pipe in (theirs, ours):
        pipe.set_ip_adapter_scale([0.7, 0.5])
    masks = [torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64)]
    masks[0][..., :32] = 1
    kwargs = {"ip_adapter_image": [_image(2), _image(3)], "cross_attention_kwargs": {"ip_adapter_masks": masks}}
    assert_images_match(call(ours, **kwargs), call(theirs, **kwargs))
    with pytest.raises(ValueError, match="Cannot assign 3 scale_configs to 2 IP-Adapter"):
        ours.set_ip_adapter_scale([1.0, 1.0, 1.0])


@pytest.mark.parametrize("class_name", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"])
def test_img2img_and_inpaint(tiny_base, adapters, class_name):
    theirs, ours = _pair(tiny_base[0], class_name, ("ip-adapter-plus_sdxl.safetensors",), adapters)
    kwargs = {"image": _image(4).resize((64, 64)), "strength": 0.8, "ip_adapter_image": _image(5)}
    if class_name.endswith("InpaintPipeline"):
        kwargs.update(mask_image=_image(6).resize((64, 64)).convert("L"), height=64, width=64)

    def run(pipe, **extra):
        generator = torch.Generator().manual_seed(0)
        return pipe("a cat", num_inference_steps=3, output_type="np", generator=generator, **kwargs, **extra).images

    ref = run(theirs)
    assert_images_match(run(ours), ref)
    for pipe in (theirs, ours):
        pipe.set_ip_adapter_scale(0.0)
    assert_changes(ref, run(theirs))
    assert_images_match(run(ours), run(theirs))


def test_unload_and_state_dict_adapters(tiny_base, adapters):
    theirs, ours = _pair(tiny_base[0], "StableDiffusionXLPipeline")
    baseline = call(ours)
    sd = ip_adapter_state_dict(ours.unet, "faceid", seed=5)
    for pipe in (theirs, ours):  # a state dict, no image encoder: embeddings only
        pipe.load_ip_adapter(sd, subfolder=None, weight_name="unused", image_encoder_folder=None)
    assert ours.image_encoder is None and ours.feature_extractor.to_dict()["crop_size"]["height"] == 224
    embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(0))]
    assert_images_match(call(ours, ip_adapter_image_embeds=embeds), call(theirs, ip_adapter_image_embeds=embeds))
    with pytest.raises(ValueError, match="needs the pipeline's image_encoder"):
        call(ours, ip_adapter_image=_image())
    ours.unload_ip_adapter()
    assert ours.image_encoder is None and ours.feature_extractor is None and ours.unet.encoder_hid_proj is None
    assert_images_match(call(ours), baseline)


def test_errors(text2img, adapters, tmp_path):
    _, ours = text2img
    embeds = [torch.zeros(2, 1, 32)]
    with pytest.raises(ValueError, match="Provide either `ip_adapter_image` or `ip_adapter_image_embeds`"):
        call(ours, ip_adapter_image=_image(), ip_adapter_image_embeds=embeds)
    with pytest.raises(ValueError, match="has to be of type `list`"):
        call(ours, ip_adapter_image_embeds=embeds[0])
    with pytest.raises(ValueError, match="list of 3D or 4D tensors but is 2D"):
        call(ours, ip_adapter_image_embeds=[torch.zeros(2, 32)])
    with pytest.raises(ValueError, match="must have same length as the number of IP Adapters"):
        call(ours, ip_adapter_image=[_image(), _image()])
    with pytest.raises(ValueError, match="Required keys are"):
        ours.load_ip_adapter({"image_proj": {}}, subfolder=None, weight_name="x")
    with pytest.raises(ValueError, match=".safetensors files only"):
        (tmp_path / SUB).mkdir()
        (tmp_path / SUB / "ip-adapter_sdxl.bin").write_bytes(b"not a pickle")
        ours.load_ip_adapter(tmp_path, subfolder=SUB, weight_name="ip-adapter_sdxl.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ours.load_ip_adapter(adapters, subfolder=SUB, weight_name="missing.safetensors")
    with pytest.raises(ValueError, match="need one entry per IP-Adapter"):
        ours.load_ip_adapter([adapters] * 3, subfolder=SUB, weight_name=["a", "b"])
    plain = load_ours("StableDiffusionXLPipeline", ours.config._name_or_path)
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        call(plain, ip_adapter_image_embeds=embeds)


def test_pipeline_with_image_encoder_saves_and_loads(text2img, ours, tmp_path):
    import diffusers

    _, loaded = text2img
    pipe = sdxl.StableDiffusionXLPipeline(
        **{**ours.components, "image_encoder": loaded.image_encoder, "feature_extractor": loaded.feature_extractor}
    )
    pipe.save_pretrained(tmp_path)
    again = sdxl.StableDiffusionXLPipeline.from_pretrained(tmp_path)
    assert again.feature_extractor.to_dict() == loaded.feature_extractor.to_dict()
    assert all(
        torch.equal(v, loaded.image_encoder.state_dict()[k]) for k, v in again.image_encoder.state_dict().items()
    )
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path)  # diffusers reads the folder too
    assert theirs.feature_extractor.crop_size == {"height": 28, "width": 28}
    assert theirs.image_encoder.config.image_size == 28
