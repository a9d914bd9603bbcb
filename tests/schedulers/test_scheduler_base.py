"""The scheduler foundation: sigma math, the config mapping, from_config across classes, registry, errors."""

from __future__ import annotations

import dataclasses
import json
import sys

import diffusers
import numpy as np
import pytest
import scipy.stats
import torch
from diffusers.utils.torch_utils import randn_tensor as reference_randn
from scheduler_helpers import SDXL, SDXL_SCHEDULER_JSON, assert_schedule_equal, normalized

import sdxl
from sdxl.noise import randn_tensor
from sdxl.schedulers import base, registry, sigmas
from sdxl.schedulers.base import SchedulerOutput, scheduler_class
from sdxl.schedulers.dpm_multistep import DPMSolverMultistepScheduler
from sdxl.schedulers.euler import EulerDiscreteScheduler

OURS = {"EulerDiscreteScheduler": EulerDiscreteScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}
# every diffusers scheduler an SDXL config can be switched to (DPMSolverSDE needs torchsde, EDM has other keys)
DIFFUSERS_SOURCES = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
]


# --- sigma math ---


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_betas_and_alphas_cumprod_match_diffusers(schedule, zero_snr):
    ours = EulerDiscreteScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    ref = diffusers.EulerDiscreteScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    assert torch.equal(ours.betas, ref.betas)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_beta_ppf_matches_scipy():
    q = np.concatenate([1 - np.linspace(0, 1, 50), [1e-6, 0.999999]])
    for a, b in [(0.6, 0.6), (2.0, 0.5), (0.5, 3.0)]:
        expected = scipy.stats.beta.ppf(q, a, b)
        assert np.max(np.abs(sigmas.beta_ppf(q, a, b) - expected)) < 1e-12


def test_sigma_to_t_matches_diffusers():
    ref = diffusers.EulerDiscreteScheduler(**SDXL)
    log_sigmas = np.log(sigmas.training_sigmas(ref.alphas_cumprod).numpy())
    values = np.concatenate([np.geomspace(1e-4, 30, 200), [0.0, 14.6146, 0.0291675]])
    expected = np.array([ref._sigma_to_t(v, log_sigmas) for v in values])
    assert np.array_equal(sigmas.sigma_to_t(values, log_sigmas), expected)


def test_karras_and_exponential_match_diffusers():
    ref = diffusers.EulerDiscreteScheduler(**SDXL)
    train = np.array([14.6, 0.03])
    assert np.array_equal(sigmas.karras_sigmas(0.03, 14.6, 20), ref._convert_to_karras(train, 20))
    assert np.array_equal(sigmas.exponential_sigmas(0.03, 14.6, 20), ref._convert_to_exponential(train, 20))


def test_bad_names_in_sigma_functions_are_value_errors():
    with pytest.raises(ValueError, match="timestep_spacing='uniform'"):
        sigmas.spaced_timesteps("uniform", 10, 1000)
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
        sigmas.make_betas("sigmoid", 1000, 0.1, 0.2)
    with pytest.raises(ValueError, match="sigma schedule 'polyexponential'"):
        sigmas.resample_sigmas("polyexponential", 0.1, 10.0, 5)


# --- the config object ---


@pytest.mark.parametrize("name", list(OURS))
def test_config_reads_like_diffusers(name):
    ours, ref = OURS[name](**SDXL), getattr(diffusers, name)(**SDXL)
    assert normalized(ours.config) == normalized(ref.config)
    assert ours.config.timestep_spacing == ours.config["timestep_spacing"] == ours.config.get("timestep_spacing")
    assert ours.config.get("no_such_key", "default") == "default"
    assert "beta_schedule" in ours.config and len(ours.config) == len(ref.config)


def test_config_is_frozen_and_checks_keys():
    config = EulerDiscreteScheduler(**SDXL).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timestep_spacing = "trailing"
    with pytest.raises(TypeError):
        config["timestep_spacing"] = "trailing"
    with pytest.raises(KeyError):
        config["no_such_key"]
    with pytest.raises(AttributeError, match="no key 'no_such_key'"):
        _ = config.no_such_key


def test_constructor_errors():
    with pytest.raises(TypeError, match=r"unexpected config keys \['use_karas_sigmas'\]"):
        EulerDiscreteScheduler(use_karas_sigmas=True)
    config = EulerDiscreteScheduler().config
    with pytest.raises(TypeError, match="not both"):
        EulerDiscreteScheduler(config, steps_offset=1)
    with pytest.raises(TypeError, match="takes a DPMSolverMultistepSchedulerConfig"):
        DPMSolverMultistepScheduler(config)
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2"):
        EulerDiscreteScheduler(num_train_timesteps=1)
    with pytest.raises(ValueError, match="trained_betas has 3 values but num_train_timesteps is 1000"):
        EulerDiscreteScheduler(trained_betas=[0.1, 0.2, 0.3])


# --- from_config across classes and libraries ---


@pytest.mark.parametrize("source_name", DIFFUSERS_SOURCES)
@pytest.mark.parametrize("target", list(OURS))
def test_from_diffusers_config_matches_diffusers(source_name, target):
    """X.from_config(pipe.scheduler.config) with a diffusers scheduler's config: same config, same schedule."""
    source = getattr(diffusers, source_name).from_config(SDXL_SCHEDULER_JSON)
    ours = OURS[target].from_config(source.config)
    ref = getattr(diffusers, target).from_config(source.config)
    assert normalized(ours.config) == normalized(ref.config)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert_schedule_equal(ours, ref)


@pytest.mark.parametrize("target", list(OURS))
def test_from_the_sdxl_scheduler_json_matches_diffusers(target):
    ours = OURS[target].from_config(SDXL_SCHEDULER_JSON)
    ref = getattr(diffusers, target).from_config(SDXL_SCHEDULER_JSON)
    assert normalized(ours.config) == normalized(ref.config)
    assert ours.config["_class_name"] == target and ours.config.set_alpha_to_one is False
    for n in (1, 30):
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert_schedule_equal(ours, ref)


@pytest.mark.parametrize("source", list(OURS))
@pytest.mark.parametrize("target", list(OURS))
def test_from_our_config_matches_diffusers_both_ways(source, target):
    """Ours -> ours equals diffusers -> diffusers; diffusers reads dict(our config) as it reads its own."""
    kwargs = dict(SDXL, use_karras_sigmas=True, prediction_type="v_prediction")
    ours_src, ref_src = OURS[source](**kwargs), getattr(diffusers, source)(**kwargs)
    ours = OURS[target].from_config(ours_src.config, timestep_spacing="trailing")
    ref = getattr(diffusers, target).from_config(ref_src.config, timestep_spacing="trailing")
    via_dict = getattr(diffusers, target).from_config(dict(ours_src.config), timestep_spacing="trailing")
    assert normalized(ours.config) == normalized(ref.config) == normalized(via_dict.config)
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    assert_schedule_equal(ours, ref)


def test_round_trip_keeps_other_schedulers_keys():
    """Euler -> DPM -> Euler keeps Euler's keys through DPM (hidden), as diffusers does."""
    ours = EulerDiscreteScheduler(**SDXL, interpolation_type="log_linear", sigma_min=0.05)
    ref = diffusers.EulerDiscreteScheduler(**SDXL, interpolation_type="log_linear", sigma_min=0.05)
    ours_dpm, ref_dpm = (
        DPMSolverMultistepScheduler.from_config(ours.config),
        diffusers.DPMSolverMultistepScheduler.from_config(ref.config),
    )
    assert normalized(ours_dpm.config) == normalized(ref_dpm.config)
    assert ours_dpm.config.interpolation_type == "log_linear"  # hidden keys read as attributes too
    back, ref_back = (
        EulerDiscreteScheduler.from_config(ours_dpm.config),
        diffusers.EulerDiscreteScheduler.from_config(ref_dpm.config),
    )
    assert normalized(back.config) == normalized(ref_back.config)
    assert back.config.interpolation_type == "log_linear" and back.config.sigma_min == 0.05


def test_defaults_are_not_inherited_by_other_classes():
    """A key left at its default is not forced on another class (DDIM keeps its own `leading` default)."""
    ours, ref = EulerDiscreteScheduler(), diffusers.EulerDiscreteScheduler()
    from_ours = diffusers.DDIMScheduler.from_config(dict(ours.config))
    from_ref = diffusers.DDIMScheduler.from_config(ref.config)
    assert from_ours.config.timestep_spacing == from_ref.config.timestep_spacing == "leading"


def test_sigma_bounds_carried_from_another_config_apply_to_dpm_karras():
    """diffusers' DPM reads sigma_min/sigma_max that a Euler config carries; so do we."""
    kwargs = dict(SDXL, use_karras_sigmas=True, sigma_min=0.1, sigma_max=8.0)
    ours = DPMSolverMultistepScheduler.from_config(EulerDiscreteScheduler(**kwargs).config)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.EulerDiscreteScheduler(**kwargs).config)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert_schedule_equal(ours, ref)


def test_from_config_overrides_unused_keys_and_errors(caplog):
    config = dict(diffusers.EulerDiscreteScheduler(**SDXL).config)
    sched, unused = EulerDiscreteScheduler.from_config(config, return_unused_kwargs=True, eta=0.3)
    assert unused == {"eta": 0.3}
    assert "eta" in caplog.text
    with pytest.raises(ValueError, match="EulerDiscreteScheduler does not support timestep_spacing='uniform'"):
        EulerDiscreteScheduler.from_config(config, timestep_spacing="uniform")
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler does not support algorithm_type='dpm3'"):
        DPMSolverMultistepScheduler.from_config({**config, "algorithm_type": "dpm3"})
    with pytest.raises(TypeError, match="takes a config mapping"):
        EulerDiscreteScheduler.from_config(sched)


def test_save_and_load_pretrained_interoperate_with_diffusers(tmp_path):
    ours = EulerDiscreteScheduler(**SDXL, use_karras_sigmas=True)
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "EulerDiscreteScheduler" and "_use_default_values" not in saved
    ref = diffusers.EulerDiscreteScheduler.from_pretrained(tmp_path / "ours")
    diffusers.DPMSolverMultistepScheduler(**SDXL).save_pretrained(tmp_path / "pipe" / "scheduler")
    ours_dpm = DPMSolverMultistepScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    ref_dpm = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    for a, b in ((ours, ref), (ours_dpm, ref_dpm)):
        a.set_timesteps(9)
        b.set_timesteps(9)
        assert_schedule_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        EulerDiscreteScheduler.from_pretrained(tmp_path / "missing")


# --- compatibles and the registry ---


@pytest.mark.parametrize("name", list(OURS))
def test_compatibles_list_the_implemented_diffusers_compatibles(name):
    ours = {cls.__name__ for cls in OURS[name]().compatibles}
    ref = {cls.__name__ for cls in getattr(diffusers, name)().compatibles}
    assert ours == ref & set(registry.MODULES)  # every implemented compatible (the registry grows per scheduler)
    assert all(issubclass(cls, base.Scheduler) for cls in OURS[name]().compatibles)
    assert getattr(sdxl, name) is OURS[name]


def test_registry_finds_modules_added_by_other_schedulers(tmp_path, monkeypatch):
    (tmp_path / "_fake_scheduler_module.py").write_text(
        "from sdxl.schedulers.base import Scheduler\n"
        "class FakeLMSScheduler(Scheduler):\n"
        "    _compatibles = ['EulerDiscreteScheduler']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "MODULES", dict(registry.MODULES))
    monkeypatch.setattr(registry, "CLASSES", dict(registry.CLASSES))
    base.register_scheduler_module("FakeLMSScheduler", "_fake_scheduler_module")
    cls = scheduler_class("FakeLMSScheduler")
    assert cls.__name__ == "FakeLMSScheduler" and cls._get_compatibles() == [cls, EulerDiscreteScheduler]
    sys.modules.pop("_fake_scheduler_module", None)
    with pytest.raises(ValueError, match="unknown scheduler 'NoSuchScheduler'; available schedulers"):
        scheduler_class("NoSuchScheduler")


# --- helpers shared by every scheduler ---


def test_randn_tensor_matches_diffusers():
    for generator in (torch.Generator().manual_seed(4), [torch.Generator().manual_seed(s) for s in (1, 2, 3)]):
        ours = randn_tensor((3, 4, 5), generator, "cpu", torch.float16)
        regen = (
            torch.Generator().manual_seed(4)
            if isinstance(generator, torch.Generator)
            else [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        )
        ref = reference_randn((3, 4, 5), generator=regen, device=torch.device("cpu"), dtype=torch.float16)
        assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def test_randn_tensor_errors():
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        randn_tensor((3, 4), [torch.Generator(), torch.Generator()])

    class CudaGenerator:
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="Cannot draw noise for a cpu tensor from a cuda generator"):
        randn_tensor((3, 4), CudaGenerator(), "cpu")


def test_scheduler_output_indexes_like_diffusers():
    prev, x0 = torch.ones(1), torch.zeros(1)
    out = SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
    assert out[0] is prev and out[1] is x0 and out["prev_sample"] is prev
    assert SchedulerOutput(prev_sample=prev).to_tuple() == (prev,)


@pytest.mark.parametrize("cls", list(OURS.values()))
def test_set_timesteps_argument_errors(cls):
    sched = cls(**SDXL)
    with pytest.raises(ValueError, match="exactly one of num_inference_steps, timesteps, sigmas; got \\[\\]"):
        sched.set_timesteps()
    with pytest.raises(ValueError, match="got \\['num_inference_steps', 'timesteps'\\]"):
        sched.set_timesteps(5, timesteps=[999, 500])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"num_inference_steps must be a positive integer, got {bad!r}"):
            sched.set_timesteps(bad)
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-D sequence"):
        sched.set_timesteps(timesteps=[])


def test_custom_sigmas_need_two_values():
    with pytest.raises(ValueError, match="sigmas must be a 1-D sequence of at least 2 values"):
        EulerDiscreteScheduler().set_timesteps(sigmas=[1.0])


def test_len_and_repr():
    sched = DPMSolverMultistepScheduler(**SDXL, num_train_timesteps=800)
    assert len(sched) == 800
    assert repr(sched).startswith("DPMSolverMultistepScheduler {") and '"steps_offset": 1' in repr(sched)
