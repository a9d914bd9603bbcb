"""The pipeline container: from_pretrained (and its dispatch), components, .to(), device/dtype, config."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import sdxl
from sdxl.pipelines.base import PipelineOutput
from sdxl.watermark import StableDiffusionXLWatermarker


def test_components_match_diffusers_names(ours, theirs):
    assert list(ours.components) == list(theirs.components)  # image_encoder/feature_extractor included
    assert all(ours.components[name] is getattr(ours, name) for name in ours.components)


def test_diffusion_pipeline_dispatches_on_class_name(tiny_base):
    pipe = sdxl.DiffusionPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    assert type(pipe) is sdxl.StableDiffusionXLPipeline
    assert pipe.config._class_name == "StableDiffusionXLPipeline"
    assert pipe.config._name_or_path == str(tiny_base[0])


def test_torch_dtype_gives_every_model_one_dtype(tiny_base):
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert {name: m.dtype for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)} == {
        name: torch.bfloat16 for name in ("vae", "text_encoder", "text_encoder_2", "unet")
    }


def test_components_given_are_used_as_they_are(ours, tiny_base):
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(
        tiny_base[0], vae=ours.vae, text_encoder_2=ours.text_encoder_2, text_encoder=None, tokenizer=None
    )
    assert pipe.vae is ours.vae and pipe.text_encoder_2 is ours.text_encoder_2
    assert pipe.text_encoder is None and pipe.tokenizer is None and pipe.unet is not ours.unet


def test_options_from_model_index_and_kwargs(tiny_base):
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0])
    assert pipe.config.force_zeros_for_empty_prompt is True  # model_index.json says so
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(
        tiny_base[0], force_zeros_for_empty_prompt=False, add_watermarker=True
    )
    assert pipe.config.force_zeros_for_empty_prompt is False
    assert isinstance(pipe.watermark, StableDiffusionXLWatermarker)


def test_unknown_from_pretrained_argument(tiny_base):
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['safety_checker'\]"):
        sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], safety_checker=None)


def test_dtype_given_twice(tiny_base):
    with pytest.raises(ValueError, match="as `torch_dtype` or as `dtype`, not both"):
        sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float16, dtype=torch.float16)


def _index_only_folder(tmp_path, **index):
    """A pipeline folder whose model_index.json lists no loadable component (nothing gets loaded)."""
    entries = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1", **index}
    (tmp_path / "model_index.json").write_text(json.dumps({k: v for k, v in entries.items() if v is not None}))
    return tmp_path


@pytest.mark.parametrize("class_name", ["StableDiffusionPipeline", None])
def test_unsupported_class_name(tmp_path, class_name):
    folder = _index_only_folder(tmp_path, _class_name=class_name)
    with pytest.raises(ValueError, match=f"names the pipeline class {class_name!r}, which sdxl does not provide"):
        sdxl.DiffusionPipeline.from_pretrained(folder)


def test_missing_required_component(tmp_path):
    folder = _index_only_folder(tmp_path)
    with pytest.raises(ValueError, match=r"needs the components \['vae', 'unet', 'scheduler'\]"):
        sdxl.StableDiffusionXLPipeline.from_pretrained(folder)


def test_component_the_pipeline_does_not_use(ours, tmp_path):
    class TextOnly(sdxl.StableDiffusionXLPipeline):
        _component_names = tuple(n for n in sdxl.StableDiffusionXLPipeline._component_names if n != "image_encoder")

    folder = _index_only_folder(tmp_path)
    given = {k: v for k, v in ours.components.items() if k != "image_encoder"}
    with pytest.raises(ValueError, match=r"components \['image_encoder'\] that TextOnly does not"):
        TextOnly.from_pretrained(folder, image_encoder=object(), **given)


def test_ip_adapter_components_are_taken(ours, tmp_path):
    folder = _index_only_folder(tmp_path)
    encoder, extractor = object(), sdxl.CLIPImageProcessor()
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(
        folder, **{**ours.components, "image_encoder": encoder, "feature_extractor": extractor}
    )
    assert pipe.image_encoder is encoder and pipe.feature_extractor is extractor


def test_to_dtype_device_and_both(tiny_base):
    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained(tiny_base[0])  # casts lose bits
    assert pipe.to(torch.float64) is pipe and pipe.dtype == torch.float64 and pipe.vae.dtype == torch.float64
    pipe.to("cpu")
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float64
    pipe.to("cpu", torch.bfloat16)
    assert {m.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module)} == {torch.bfloat16}
    pipe.to(device=torch.device("cpu"), dtype=torch.float16)
    assert pipe.text_encoder.dtype == torch.float16


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.float16, "cpu"), {}, ValueError, "device first and the dtype second"),
        (("cpu", torch.float16, 1), {}, ValueError, "at most a device and a dtype"),
        ((torch.float16,), {"dtype": torch.float32}, ValueError, "dtype was given both"),
        (("cpu",), {"device": "cpu"}, ValueError, "device was given both"),
        ((), {"dtype": "float16"}, TypeError, "must be a torch.dtype"),
        ((), {"non_blocking": True}, TypeError, r"unexpected arguments \['non_blocking'\]"),
    ],
)
def test_to_rejects(ours, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ours.to(*args, **kwargs)


def test_scheduler_can_be_replaced(ours):
    before = ours.scheduler
    try:
        ours.scheduler = type(before).from_config(before.config)
        assert ours.components["scheduler"] is ours.scheduler is not before
    finally:
        ours.scheduler = before


def test_config_is_read_only(ours):
    assert copy.deepcopy(ours.config) == ours.config
    with pytest.raises(TypeError, match="read-only"):
        ours.config["force_zeros_for_empty_prompt"] = False
    with pytest.raises(AttributeError, match="no key 'requires_aesthetics_score'"):
        ours.config.requires_aesthetics_score  # noqa: B018


def test_register_to_config(ours):
    try:
        ours.register_to_config(force_zeros_for_empty_prompt=False)
        assert ours.config.force_zeros_for_empty_prompt is False
    finally:
        ours.register_to_config(force_zeros_for_empty_prompt=True)


def test_output_indexing():
    out = PipelineOutput(images=[1, 2])
    assert out[0] is out.images and out["images"] is out.images and out.to_tuple() == ([1, 2],)
