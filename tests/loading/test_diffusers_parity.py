"""Folders saved by diffusers/transformers load into our classes with exactly the weights their own loaders give."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

unet_mod = pytest.importorskip("sdxl.models.unet")
vae_mod = pytest.importorskip("sdxl.models.vae")
clip_mod = pytest.importorskip("sdxl.models.clip")

from sdxl.loading.diffusers import load_model, load_pipeline_components

OURS = {
    "unet": unet_mod.UNet2DConditionModel,
    "vae": vae_mod.AutoencoderKL,
    "text_encoder": clip_mod.CLIPTextModel,
    "text_encoder_2": clip_mod.CLIPTextModelWithProjection,
}


def _reference_class(name: str):
    import diffusers
    import transformers

    return {
        "unet": diffusers.UNet2DConditionModel,
        "vae": diffusers.AutoencoderKL,
        "text_encoder": transformers.CLIPTextModel,
        "text_encoder_2": transformers.CLIPTextModelWithProjection,
    }[name]


def _reference_load(folder, name, dtype, variant=None):
    """The reference library's own from_pretrained of one component, as a state dict in the official spelling."""
    kwargs = {"variant": variant} if variant else {}
    cls = _reference_class(name)
    model = cls.from_pretrained(folder, subfolder=name, dtype=dtype, **kwargs)
    sd = model.state_dict()
    if name == "text_encoder":  # transformers 5's CLIPTextModel has no `text_model.` level
        sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
    return sd


def assert_same_state(ours: torch.nn.Module, ref: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    sd = ours.state_dict()
    assert sd.keys() == ref.keys()
    for k, v in ref.items():
        assert sd[k].dtype == dtype == v.dtype, k
        assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("name", list(OURS))
def test_base_components_equal_reference_loading(tiny_base, name):
    folder, _ = tiny_base
    ours = load_model(OURS[name], folder, name)
    assert_same_state(ours, _reference_load(folder, name, torch.float32), torch.float32)


@pytest.mark.parametrize("name", ["unet", "vae", "text_encoder_2"])
def test_refiner_components_equal_reference_loading(tiny_refiner, name):
    folder, _ = tiny_refiner
    ours = OURS[name].from_pretrained(folder, subfolder=name, torch_dtype=torch.float32)
    assert_same_state(ours, _reference_load(folder, name, torch.float32), torch.float32)


def test_model_from_pretrained_surface(tiny_base):
    folder, pipe = tiny_base
    unet = unet_mod.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert unet.config == unet_mod.UNetConfig.from_dict(json.loads((folder / "unet" / "config.json").read_text()))
    assert unet.dtype == torch.float32 and not unet.training
    vae = vae_mod.AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=torch.float16)
    assert vae.dtype == torch.float16
    assert all(torch.equal(vae.state_dict()[k], v.half()) for k, v in pipe.vae.state_dict().items())


@pytest.fixture(scope="module")
def fp16_sharded(tiny_base, tmp_path_factory):
    """The tiny base saved again by diffusers with variant="fp16" and small shards (unet, vae, text encoders)."""
    from diffusers import StableDiffusionXLPipeline

    source, _ = tiny_base
    folder = tmp_path_factory.mktemp("tiny_base_fp16_sharded")
    pipe = StableDiffusionXLPipeline.from_pretrained(source, dtype=torch.float16)  # not the shared fixture
    pipe.save_pretrained(folder, variant="fp16", max_shard_size="60KB")
    return folder


def test_fp16_sharded_folder_has_the_layout_we_expect(fp16_sharded):
    unet_files = sorted(p.name for p in (fp16_sharded / "unet").iterdir())
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in unet_files
    assert any(f.startswith("diffusion_pytorch_model.fp16-00001-of-") for f in unet_files)
    te_files = sorted(p.name for p in (fp16_sharded / "text_encoder_2").iterdir())
    assert "model.safetensors.index.fp16.json" in te_files


@pytest.mark.parametrize("name", list(OURS))
def test_fp16_sharded_variant_equals_reference(fp16_sharded, name):
    ours = load_model(OURS[name], fp16_sharded, name, variant="fp16", torch_dtype=torch.float16)
    assert_same_state(ours, _reference_load(fp16_sharded, name, torch.float16, variant="fp16"), torch.float16)


def test_fp16_pipeline_equals_diffusers_pipeline(fp16_sharded):
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_pretrained(fp16_sharded, variant="fp16", dtype=torch.float16)
    comps, index = load_pipeline_components(fp16_sharded, variant="fp16", torch_dtype=torch.float16)
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    for name in OURS:
        want = ref.components[name].state_dict()
        if name == "text_encoder":
            want = {"text_model." + k: v for k, v in want.items()}
        assert_same_state(comps[name], want, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_component_gets_torch_dtype(tiny_base, dtype):
    folder, pipe = tiny_base
    comps, _ = load_pipeline_components(folder, torch_dtype=dtype)
    for name in OURS:
        assert comps[name].dtype == dtype
        assert {t.dtype for t in comps[name].state_dict().values()} == {dtype}, name
        ref = pipe.components[name].state_dict()
        if name == "text_encoder":
            ref = {"text_model." + k: v for k, v in ref.items()}
        assert all(torch.equal(comps[name].state_dict()[k], v.to(dtype)) for k, v in ref.items()), name


def test_pipeline_components_of_the_base(tiny_base):
    from sdxl.schedulers.euler import EulerDiscreteScheduler
    from sdxl.tokenizer import CLIPTokenizer

    folder, pipe = tiny_base
    comps, index = load_pipeline_components(folder)
    assert index == json.loads((folder / "model_index.json").read_text())
    assert comps["feature_extractor"] is None and comps["image_encoder"] is None
    assert isinstance(comps["scheduler"], EulerDiscreteScheduler)
    assert isinstance(comps["tokenizer"], CLIPTokenizer) and isinstance(comps["tokenizer_2"], CLIPTokenizer)
    text = "a photo of an astronaut riding a horse"
    for name in ("tokenizer", "tokenizer_2"):
        ref = pipe.components[name](text, padding="max_length", max_length=77).input_ids
        assert comps[name](text, padding="max_length", max_length=77).input_ids == ref, name


def test_refiner_pipeline_components(tiny_refiner):
    folder, _ = tiny_refiner
    comps, index = load_pipeline_components(folder)
    assert comps["text_encoder"] is None and comps["tokenizer"] is None
    assert isinstance(comps["text_encoder_2"], clip_mod.CLIPTextModelWithProjection)
    assert index["requires_aesthetics_score"] is True and index["force_zeros_for_empty_prompt"] is False


def test_official_prefixed_text_encoder_with_position_ids(tiny_base, tmp_path):
    """The official SDXL hub spelling: `text_model.` keys plus the int64 `position_ids` buffer."""
    folder, pipe = tiny_base
    shutil.copy(folder / "text_encoder" / "config.json", tmp_path / "config.json")
    ref = {"text_model." + k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items()}
    on_disk = {**ref, "text_model.embeddings.position_ids": torch.arange(77, dtype=torch.int64)[None]}
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in on_disk.items()},
        str(tmp_path / "model.fp16.safetensors"),
    )
    ours = clip_mod.CLIPTextModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert_same_state(ours, {k: v.half() for k, v in ref.items()}, torch.float16)


def test_hub_id_from_a_fake_cache(tiny_base, tmp_path, monkeypatch):
    """`AutoencoderKL.from_pretrained("org/name")` and a pipeline load from a cached snapshot, offline."""
    folder, pipe = tiny_base
    rev = "f" * 40
    repo = tmp_path / "hub" / "models--madebyollin--sdxl-vae-fp16-fix"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.copytree(folder / "vae", repo / "snapshots" / rev)
    pipe_repo = tmp_path / "hub" / "models--org--tiny-sdxl"
    (pipe_repo / "refs").mkdir(parents=True)
    (pipe_repo / "refs" / "main").write_text(rev)
    shutil.copytree(folder, pipe_repo / "snapshots" / rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    vae = vae_mod.AutoencoderKL.from_pretrained("madebyollin/sdxl-vae-fp16-fix", torch_dtype=torch.float16)
    assert all(torch.equal(vae.state_dict()[k], v.half()) for k, v in pipe.vae.state_dict().items())
    comps, _ = load_pipeline_components("org/tiny-sdxl", overrides={"vae": vae})
    assert comps["vae"] is vae and isinstance(comps["unet"], unet_mod.UNet2DConditionModel)
    with pytest.raises(FileNotFoundError, match="hf download org/not-cached"):
        load_pipeline_components("org/not-cached")
