"""The shared denoising core against the diffusers functions it mirrors: noise, CFG, cuts, timesteps, decode."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from pipeline_parity import assert_changes, assert_images_match, call

from sdxl.pipelines import denoise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seeds", [[3], [3, 4, 5], None])
def test_randn_tensor_matches_diffusers(dtype, seeds):
    from diffusers.utils.torch_utils import randn_tensor

    shape = (len(seeds) if seeds else 2, 4, 8, 6)

    def generators():
        if seeds is None:
            return torch.Generator().manual_seed(11)
        return [torch.Generator().manual_seed(s) for s in seeds]

    mine = denoise.randn_tensor(shape, generators(), torch.device("cpu"), dtype)
    ref = randn_tensor(shape, generator=generators(), device=torch.device("cpu"), dtype=dtype)
    assert mine.dtype == dtype and torch.equal(mine, ref)


def test_randn_tensor_without_generator_uses_the_global_seed():
    from diffusers.utils.torch_utils import randn_tensor

    torch.manual_seed(5)
    mine = denoise.randn_tensor((1, 4, 4, 4), None, "cpu", torch.float32)
    torch.manual_seed(5)
    assert torch.equal(mine, randn_tensor((1, 4, 4, 4), device=torch.device("cpu"), dtype=torch.float32))


def test_randn_tensor_refuses_an_accelerator_generator_for_cpu_noise():
    generator = SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match="Cannot draw noise for a cpu tensor from a cuda generator"):
        denoise.randn_tensor((1, 4, 4, 4), generator, "cpu", torch.float32)


@pytest.mark.parametrize("guidance_scale", [1.5, 5.0, 12.0])
@pytest.mark.parametrize("guidance_rescale", [0.0, 0.3, 1.0])
def test_classifier_free_guidance_matches_diffusers(guidance_scale, guidance_rescale):
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond, text = noise.chunk(2)
    ref = uncond + guidance_scale * (text - uncond)
    if guidance_rescale > 0:
        ref = rescale_noise_cfg(ref, text, guidance_rescale=guidance_rescale)
    torch.testing.assert_close(denoise.classifier_free_guidance(noise, guidance_scale, guidance_rescale), ref)


@pytest.mark.parametrize("scheduler_name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("steps", [5, 30, 50])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.95])
def test_denoising_end_cut_matches_diffusers_rule(tiny_base, scheduler_name, steps, fraction):
    """diffusers keeps the timesteps t >= round(T - fraction * T) (Python filter over the schedule)."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_name).from_pretrained(tiny_base[0], subfolder="scheduler")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    cutoff = round(1000 - fraction * 1000)
    expected = len(list(filter(lambda ts: ts >= cutoff, timesteps)))
    assert denoise.steps_before_denoising_end(timesteps, fraction, 1000) == expected


def test_retrieve_timesteps_matches_diffusers(tiny_base):
    import diffusers
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps

    make = lambda: diffusers.EulerDiscreteScheduler.from_pretrained(tiny_base[0], subfolder="scheduler")
    for kwargs in ({"num_inference_steps": 7}, {"timesteps": [999, 600, 250]}, {"sigmas": [14.0, 3.0, 0.5]}):
        mine, n_mine = denoise.retrieve_timesteps(
            make(), kwargs.get("num_inference_steps"), "cpu", kwargs.get("timesteps"), kwargs.get("sigmas")
        )
        ref, n_ref = retrieve_timesteps(make(), device="cpu", **kwargs)
        assert n_mine == n_ref and torch.equal(mine, ref)


class _PlainScheduler:
    def set_timesteps(self, num_inference_steps, device=None):
        self.timesteps = torch.arange(num_inference_steps)

    def step(self, model_output, timestep, sample, return_dict=True):
        return (sample,)


@pytest.mark.parametrize("name", ["timesteps", "sigmas"])
def test_retrieve_timesteps_refuses_custom_schedules_the_scheduler_cannot_take(name):
    kind = "timestep" if name == "timesteps" else "sigmas"  # diffusers' wording
    with pytest.raises(ValueError, match=f"_PlainScheduler'>'s `set_timesteps` does not support custom {kind} schedules"):
        denoise.retrieve_timesteps(_PlainScheduler(), None, "cpu", **{name: [1.0, 0.5]})


def test_scheduler_step_kwargs_only_what_step_takes(tiny_base):
    import diffusers

    generator = torch.Generator()
    ddim = diffusers.DDIMScheduler.from_pretrained(tiny_base[0], subfolder="scheduler")
    assert denoise.scheduler_step_kwargs(ddim, generator, 0.3) == {"eta": 0.3, "generator": generator}
    assert denoise.scheduler_step_kwargs(_PlainScheduler(), generator, 0.3) == {}


def test_progress_bar_counts_steps(ours, capsys):
    import io

    out = io.StringIO()
    ours.set_progress_bar_config(file=out, ascii=True)
    try:
        call(ours, num_inference_steps=3)
    finally:
        ours.set_progress_bar_config(disable=True)
    assert "3/3" in out.getvalue()


def test_progress_bar_needs_a_size(ours):
    with pytest.raises(ValueError, match="needs an `iterable` or a `total`"):
        ours.progress_bar()


def test_decode_with_latents_mean_and_std(ours, theirs, tiny_base):
    """A VAE whose config has latents_mean/std (as SDXL-derived VAEs may): both pipelines denormalise with it."""
    import reference

    vae = reference.make_vae(seed=3)
    vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    plain = reference.make_vae(seed=3)
    ours_vae, theirs_vae = ours.vae, theirs.vae
    try:
        ours.vae = theirs.vae = vae
        mine, ref = call(ours), call(theirs)
        theirs.vae = plain
        without = call(theirs)
    finally:
        ours.vae, theirs.vae = ours_vae, theirs_vae
    assert_images_match(mine, ref)
    assert_changes(ref, without)


class _NoSyncScheduler(_PlainScheduler):
    order = 1

    def scale_model_input(self, sample, timestep):
        return sample * 0.5

    def step(self, model_output, timestep, sample, return_dict=True):
        return (sample - 0.1 * model_output,)


class _Unet:
    def __init__(self):
        self.inputs = []

    def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs, return_dict):
        self.inputs.append(x)
        return (x[:, :4] * 0.3 + encoder_hidden_states.mean() + added_cond_kwargs["time_ids"].sum(),)


def _fake_pipe(scheduler=None):
    """The attributes `denoise` reads from a pipeline, over a toy UNet and scheduler."""
    return SimpleNamespace(
        unet=_Unet(), scheduler=scheduler or _NoSyncScheduler(), interrupt=False, do_classifier_free_guidance=True,
        guidance_scale=5.0, guidance_rescale=0.5,
        progress_bar=lambda total: contextlib.nullcontext(SimpleNamespace(update=lambda: None)),
    )


def _state():
    return {
        "latents": torch.ones(1, 4, 2, 2),
        "prompt_embeds": torch.ones(2, 3, 8),
        "add_text_embeds": torch.ones(2, 4),
        "add_time_ids": torch.ones(2, 6),
    }


def test_hooks_and_begin_index():
    """model_input_hook feeds the UNet (9-channel inpainting), after_step_hook sees each stepped latent before the
    callback (mask blend), begin_index reaches the scheduler (img2img / denoising_start)."""

    class Scheduler(_NoSyncScheduler):
        def set_begin_index(self, begin_index=0):
            self.begin_index = begin_index

    pipe, events = _fake_pipe(Scheduler()), []
    pipe.guidance_rescale = 0.0  # the zeroed latents would make the rescale 0 / 0
    state = {**_state(), "mask": torch.zeros(1, 5, 2, 2)}

    def model_input_hook(model_input, state):
        return torch.cat([model_input, torch.cat([state["mask"]] * 2)], dim=1)  # (2, 4 + 5, 2, 2)

    def after_step_hook(i, t, latents, state):
        events.append(("after_step", i, int(t)))
        return latents * 0

    def callback(pipe, i, t, kwargs):
        events.append(("callback", i, float(kwargs["latents"].abs().sum())))
        return {}

    latents = denoise.denoise(
        pipe, state, torch.tensor([7.0, 3.0]), progress_total=2, step_kwargs={}, callback_on_step_end=callback,
        model_input_hook=model_input_hook, after_step_hook=after_step_hook, begin_index=5,
    )
    assert pipe.scheduler.begin_index == 5
    assert [tuple(x.shape) for x in pipe.unet.inputs] == [(2, 9, 2, 2)] * 2
    assert events == [("after_step", 0, 7), ("callback", 0, 0.0), ("after_step", 1, 3), ("callback", 1, 0.0)]
    assert torch.equal(latents, torch.zeros(1, 4, 2, 2))


def test_loop_never_reads_tensor_values_on_the_host(monkeypatch):
    """No .item()/bool()/int()/float()/tolist() on a tensor inside the loop: nothing that would sync a GPU."""
    pipe, state = _fake_pipe(), _state()

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host inside the denoising loop")

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    latents = denoise.denoise(
        pipe, state, torch.arange(3, 0, -1), progress_total=3, step_kwargs={},
        callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0.5},
    )
    monkeypatch.undo()
    assert [tuple(x.shape) for x in pipe.unet.inputs] == [(2, 4, 2, 2)] * 3 and latents.shape == (1, 4, 2, 2)


class _HalfOverflowVae(torch.nn.Module):
    """Decodes to NaN in half precision and to the latents' first three channels in float32 (an fp16 overflow)."""

    def __init__(self, dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        self.config = type("Config", (), {"scaling_factor": 1.0, "force_upcast": False})()

    @property
    def dtype(self):
        return self.weight.dtype

    @property
    def device(self):
        return self.weight.device

    def decode(self, latents):
        sample = latents[:, :3].clone()
        if self.weight.dtype != torch.float32:
            sample = torch.full_like(sample, float("nan"))
        return type("Out", (), {"sample": sample})()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_nan_half_precision_decode_is_redone_in_float32(dtype):
    from sdxl.pipelines.denoise import decode_latents

    vae = _HalfOverflowVae(dtype)
    latents = torch.rand(1, 4, 2, 2)
    image = decode_latents(vae, latents)
    assert torch.isfinite(image).all() and image.dtype == dtype
    torch.testing.assert_close(image.float(), latents[:, :3].to(dtype).float())
    assert vae.dtype == dtype  # the VAE is back in its own dtype


def test_a_float32_nan_decode_is_left_for_the_caller():
    from sdxl.pipelines.denoise import decode_latents

    vae = _HalfOverflowVae(torch.float32)
    vae.decode = lambda latents: type("Out", (), {"sample": torch.full((1, 3, 2, 2), float("nan"))})()
    assert torch.isnan(decode_latents(vae, torch.rand(1, 4, 2, 2))).all()
