"""Single-file checkpoints (original Stability layout): round trips through our writer/reader and parity with
diffusers' `from_single_file` reading the same file (config= a local diffusers folder, offline)."""

from __future__ import annotations

import json

import pytest
import reference
import torch
from safetensors.torch import load_file, save_file

import sdxl
from sdxl.loading import keymaps
from sdxl.loading.diffusers import load_pipeline_components
from sdxl.loading.save import original_state_dict, save_single_file
from sdxl.loading.single_file import load_single_file_components

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")
# diffusers tells CLIP-L from OpenCLIP-G in a single file by comparing position-embedding widths with the config it
# loads into, so with equal widths (the shared tiny fixture: 32 and 32) it loads CLIP-L's weights into
# text_encoder_2. Our own base/inpaint fixtures give text_encoder_2 a different width.
TEXT2_HIDDEN = 48


def _base_like(folder, unet_kind: str):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    te1 = CLIPTextModel(reference.text_encoder_config(reference.TEXT_HIDDEN, 3, "quick_gelu"))
    te2 = CLIPTextModelWithProjection(
        reference.text_encoder_config(TEXT2_HIDDEN, 3, "gelu", reference.TEXT2_PROJECTION)
    )
    unet = UNet2DConditionModel(
        **dict(reference.unet_kwargs(unet_kind), cross_attention_dim=reference.TEXT_HIDDEN + TEXT2_HIDDEN)
    )
    pipe = StableDiffusionXLPipeline(
        vae=reference.make_vae(0),
        text_encoder=te1.eval(),
        text_encoder_2=te2.eval(),
        tokenizer=reference.make_tokenizer(folder / "_vocab1"),
        tokenizer_2=reference.make_tokenizer(folder / "_vocab2", pad_token="!"),
        unet=unet.eval(),
        scheduler=reference.make_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_refiner):
    return {
        "base": _base_like(tmp_path_factory.mktemp("sf_base"), "base"),
        "inpaint": _base_like(tmp_path_factory.mktemp("sf_inpaint"), "inpaint"),
        "refiner": tiny_refiner[0],
    }


@pytest.fixture(scope="module")
def single_files(folders, tmp_path_factory):
    """kind -> (diffusers folder, our components loaded from it, the single file our writer made from them)."""
    out = {}
    root = tmp_path_factory.mktemp("sf_files")
    for kind, folder in folders.items():
        components, _ = load_pipeline_components(folder, torch_dtype=torch.float32)
        out[kind] = (folder, components, save_single_file(components, root / f"{kind}.safetensors"))
    return out


def _sd(model) -> dict[str, torch.Tensor]:
    return keymaps.normalize_clip_text(dict(model.state_dict())) if "CLIP" in type(model).__name__ else model.state_dict()


def _assert_same(a, b, name):
    sa, sb = _sd(a), _sd(b)
    assert sa.keys() == sb.keys(), (name, set(sa) ^ set(sb))
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (name, k)


@pytest.mark.parametrize("kind", ["base", "refiner", "inpaint"])
def test_round_trip_gives_identical_state_dicts(single_files, kind):
    folder, components, path = single_files[kind]
    loaded, info = load_single_file_components(path, config=folder)
    assert info["kind"] == kind
    for name in MODELS:
        if components.get(name) is None:
            assert loaded.get(name) is None
            continue
        _assert_same(components[name], loaded[name], name)
    # written again, the file is byte-for-byte the same tensors
    again = original_state_dict(loaded)
    first = load_file(str(path))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.parametrize("kind", ["base", "refiner", "inpaint"])
def test_diffusers_reads_our_file_as_we_do(single_files, kind):
    import diffusers

    folder, _, path = single_files[kind]
    cls = diffusers.StableDiffusionXLImg2ImgPipeline if kind == "refiner" else diffusers.StableDiffusionXLPipeline
    theirs = cls.from_single_file(str(path), config=str(folder), torch_dtype=torch.float32)
    ours, _ = load_single_file_components(path, config=folder)
    for name in MODELS:
        if getattr(theirs, name) is None:
            assert ours[name] is None
            continue
        _assert_same(getattr(theirs, name), ours[name], name)
    # and the UNet outputs agree (same weights, same inputs)
    unet = ours["unet"]
    c = unet.config
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, c.in_channels, 8, 8, generator=gen)
    context = torch.randn(1, 5, c.cross_attention_dim, generator=gen)
    n_ids = 5 if kind == "refiner" else 6
    added = {"text_embeds": torch.randn(1, reference.TEXT2_PROJECTION, generator=gen),
             "time_ids": torch.randn(1, n_ids, generator=gen)}
    with torch.no_grad():
        a = theirs.unet(sample, 10, context, added_cond_kwargs=added).sample
        b = unet(sample, 10, context, added_cond_kwargs=added).sample
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5


def test_diffusers_converter_reads_original_keys_built_by_our_inverse_maps(single_files):
    """diffusers has no single-file writer: build the original layout with our inverse maps, let diffusers'
    converters read it, and compare with our models."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    folder, components, _ = single_files["base"]
    original = original_state_dict(components)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    unet = convert_ldm_unet_checkpoint(original, unet_config)
    vae = convert_ldm_vae_checkpoint(original, vae_config)
    for theirs, model in ((unet, components["unet"]), (vae, components["vae"])):
        ours = model.state_dict()
        assert theirs.keys() == ours.keys()
        assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_pipeline_from_single_file_matches_from_pretrained(single_files):
    folder, _, path = single_files["base"]
    a = sdxl.StableDiffusionXLPipeline.from_single_file(path, config=folder, torch_dtype=torch.float32)
    b = sdxl.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    for name in MODELS:
        _assert_same(getattr(a, name), getattr(b, name), name)
    assert type(a.scheduler) is type(b.scheduler) and dict(a.scheduler.config) == dict(b.scheduler.config)
    assert a.config.force_zeros_for_empty_prompt is True
    kwargs = {"prompt": "a red circle", "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "latent"}
    out_a = a(**kwargs, generator=torch.Generator().manual_seed(0)).images
    out_b = b(**kwargs, generator=torch.Generator().manual_seed(0)).images
    # same weights; mmapped vs copied tensors may take different kernels, so not bit-equal
    assert ((out_a - out_b).abs().max() / out_b.abs().max()).item() < 1e-5
    c = sdxl.DiffusionPipeline.from_single_file(path, config=folder)
    assert type(c).__name__ == "StableDiffusionXLPipeline"


def test_bf16_dtype(single_files):
    folder, _, path = single_files["base"]
    loaded, _ = load_single_file_components(path, config=folder, torch_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for name in MODELS for p in loaded[name].parameters())


# ---- completing a UNet-only file; errors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_only(single_files, tmp_path_factory):
    folder, components, path = single_files["base"]
    sd = {k: v for k, v in load_file(str(path)).items() if k.startswith(keymaps.UNET_PREFIX)}
    out = tmp_path_factory.mktemp("sf_unet") / "unet.safetensors"
    save_file(sd, str(out))
    return folder, components, out


def test_unet_only_file_lists_missing_components(unet_only):
    folder, _, path = unet_only
    with pytest.raises(ValueError, match=r"without vae, text_encoder, text_encoder_2.*vae=\.\.\., text_encoder=\.\.\."):
        load_single_file_components(path, config=folder)


def test_unet_only_file_completed_by_arguments(unet_only):
    folder, components, path = unet_only
    extra = {n: components[n] for n in ("vae", "text_encoder", "text_encoder_2")}
    pipe = sdxl.StableDiffusionXLPipeline.from_single_file(path, config=folder, **extra)
    _assert_same(pipe.unet, components["unet"], "unet")
    assert pipe.vae is components["vae"] and pipe.text_encoder_2 is components["text_encoder_2"]


def test_unet_only_file_of_unknown_size_asks_for_config(unet_only):
    _, _, path = unet_only
    with pytest.raises(ValueError, match="neither the SDXL base.*config="):
        load_single_file_components(path)


def test_not_an_sdxl_checkpoint(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match=r"not an SDXL checkpoint.*\['encoder'\]"):
        load_single_file_components(path)


def test_channel_count_errors(single_files, tmp_path):
    folder, _, path = single_files["base"]
    sd = load_file(str(path))
    key = keymaps.UNET_PREFIX + "input_blocks.0.0.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 5, *sd[key].shape[2:])
    bad = tmp_path / "five.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match="takes 5 input channels"):
        load_single_file_components(bad, config=folder)


def test_nine_channel_refiner_is_refused(single_files, tmp_path):
    folder, _, path = single_files["refiner"]
    sd = load_file(str(path))
    key = keymaps.UNET_PREFIX + "input_blocks.0.0.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 9, *sd[key].shape[2:])
    bad = tmp_path / "nine.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match="9-channel"):
        load_single_file_components(bad, config=folder)


def test_nan_weights_are_named(single_files, tmp_path):
    folder, _, path = single_files["base"]
    sd = load_file(str(path))
    key = "first_stage_model.decoder.conv_out.bias"
    sd[key] = sd[key].clone()
    sd[key][0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match="NaN or Inf values in first_stage_model.decoder.conv_out.bias"):
        load_single_file_components(bad, config=folder)


def test_extra_keys_are_reported(single_files, tmp_path):
    folder, _, path = single_files["base"]
    sd = load_file(str(path))
    sd["model.diffusion_model.lora_up.weight"] = torch.zeros(1)
    sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    bad = tmp_path / "extra.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match=r"1 key\(s\) that no SDXL base model uses \(model.diffusion_model.lora_up"):
        load_single_file_components(bad, config=folder)


def test_missing_tensor_is_named(single_files, tmp_path):
    folder, _, path = single_files["base"]
    sd = load_file(str(path))
    del sd["first_stage_model.decoder.up.0.block.0.conv1.weight"]
    bad = tmp_path / "missing.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match="vae.*lacks first_stage_model.decoder.up.0.block.0.conv1.weight"):
        load_single_file_components(bad, config=folder)


def test_wrong_sizes_without_config_ask_for_config(single_files, tmp_path):
    """Another tool's file (no stored configs) of a model with non-SDXL sizes needs config=; ours loads alone."""
    from safetensors.torch import load_file, save_file

    _, components, path = single_files["refiner"]  # tiny refiner: detected by its text encoder, sizes are not SDXL's
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(path)), str(bare), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="pass config="):
        load_single_file_components(bare)
    loaded, info = load_single_file_components(path)
    assert info["kind"] == "refiner" and loaded["unet"].config == components["unet"].config


def test_argument_errors(single_files, tmp_path):
    folder, _, path = single_files["base"]
    with pytest.raises(ValueError, match="is a folder"):
        load_single_file_components(folder)
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        load_single_file_components(tmp_path / "absent.safetensors")
    with pytest.raises(TypeError, match="torch_dtype"):
        load_single_file_components(path, torch_dtype="float16")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_single_file_components(path, config=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config of 'unet'"):
        load_single_file_components(path, config=tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        sdxl.StableDiffusionXLPipeline.from_single_file(path, config=folder, not_an_option=1)


@pytest.mark.parametrize(
    "kind, class_name",
    [("refiner", "StableDiffusionXLImg2ImgPipeline"), ("inpaint", "StableDiffusionXLInpaintPipeline")],
)
def test_diffusion_pipeline_picks_the_class_of_the_kind(single_files, kind, class_name):
    """As diffusers: a refiner file opens as an img2img pipeline (with the aesthetic-score option), a 9-channel file
    as an inpainting one; the seeds' `StableDiffusionXLImg2ImgPipeline.from_single_file(refiner)` works too."""
    folder, _, path = single_files[kind]
    pipe = sdxl.DiffusionPipeline.from_single_file(path, config=folder)
    assert type(pipe).__name__ == class_name
    direct = getattr(sdxl, class_name).from_single_file(path, config=folder)
    assert type(direct).__name__ == class_name
    if kind == "refiner":
        assert pipe.text_encoder is None and pipe.config.requires_aesthetics_score is True
        assert pipe.config.force_zeros_for_empty_prompt is False


BASE_URL = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/sd_xl_base_1.0.safetensors"


def test_hub_file_url_goes_through_the_cache(single_files, monkeypatch):
    """The seed's `from_single_file("https://huggingface.co/ORG/NAME/blob/main/FILE")`: repo, revision and file are
    read off the URL and the file comes from huggingface_hub's cache."""
    from sdxl.loading import hub

    folder, _, path = single_files["base"]
    asked = {}

    def fake_snapshot(repo_id, patterns, *, offline, cache_dir, revision):
        asked.update(repo_id=repo_id, patterns=patterns, revision=revision)
        return path.parent

    monkeypatch.setattr(hub, "_snapshot", fake_snapshot)
    url = BASE_URL.replace("sd_xl_base_1.0.safetensors", path.name)
    pipe = sdxl.StableDiffusionXLPipeline.from_single_file(url, config=folder)
    assert asked == {"repo_id": "stabilityai/stable-diffusion-xl-base-1.0", "patterns": [path.name], "revision": "main"}
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"


def test_hub_file_url_offline_names_the_download_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download stabilityai/stable-diffusion-xl-base-1.0 --include "
                       "sd_xl_base_1.0.safetensors --revision main"):
        sdxl.StableDiffusionXLPipeline.from_single_file(BASE_URL)


def test_other_urls_ask_for_a_local_path():
    with pytest.raises(ValueError, match="not a Hugging Face Hub file URL"):
        sdxl.StableDiffusionXLPipeline.from_single_file("https://example.com/model.safetensors")
