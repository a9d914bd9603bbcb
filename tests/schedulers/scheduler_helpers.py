"""Shared helpers for scheduler parity tests: run the same denoising loop on ours and diffusers', compare."""

from __future__ import annotations

import torch
from reference import SDXL_SCHEDULER_JSON  # noqa: F401  (the scheduler tests import it from here)

# SDXL's scheduler_config.json (stabilityai/stable-diffusion-xl-base-1.0), minus keys of other schedulers
SDXL = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
STEP_COUNTS = (1, 2, 3, 10, 25, 50)
# The config matrices most scheduler tests sweep; conftest.py turns each into a fixture of the same name
# (`spacing`, `dtype`, `kind`, `prediction`, `final`), which a test overrides with its own parametrize.
SPACINGS = ("leading", "trailing", "linspace")
DTYPES = (torch.float32, torch.float64, torch.float16)
SIGMA_KINDS = {
    "interp": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}
PREDICTIONS = ("epsilon", "v_prediction", "sample")
FINAL_SIGMAS = ("zero", "sigma_min")
REL_TOL = 1e-6


def scheduler_pair(name: str):
    """`pair(**config)` -> (our scheduler `name`, diffusers' `name`), both built with the same config."""

    def pair(**config):
        import diffusers

        from sdxl.schedulers.base import scheduler_class

        return scheduler_class(name)(**config), getattr(diffusers, name)(**config)

    return pair


def normalized(config) -> dict:
    """A config as a plain dict, comparable across libraries (default-key lists are unordered, betas lists)."""
    out = dict(config)
    if "_use_default_values" in out:
        out["_use_default_values"] = sorted(out["_use_default_values"])
    if out.get("trained_betas") is not None:
        out["trained_betas"] = [float(b) for b in out["trained_betas"]]
    return out


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| in float64."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_schedule_equal(ours, ref) -> None:
    """Same timesteps and sigmas (values and dtype) and the same init_noise_sigma."""
    assert ours.timesteps.dtype == ref.timesteps.dtype, (ours.timesteps.dtype, ref.timesteps.dtype)
    assert torch.equal(ours.timesteps, ref.timesteps), (ours.timesteps, ref.timesteps)
    assert ours.sigmas.dtype == ref.sigmas.dtype
    assert torch.equal(ours.sigmas, ref.sigmas), (ours.sigmas, ref.sigmas)
    assert ours.num_inference_steps == ref.num_inference_steps
    assert type(ours.init_noise_sigma) is type(ref.init_noise_sigma)
    assert float(ours.init_noise_sigma) == float(ref.init_noise_sigma)


def fake_model(x: torch.Tensor, i: int) -> torch.Tensor:
    """A deterministic stand-in for the UNet: fixed noise per step plus a term that depends on the input."""
    g = torch.Generator().manual_seed(1000 + i)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return (0.7 * eps + 0.3 * torch.tanh(x.double())).to(x.dtype)


def start_sample(dtype: torch.dtype = torch.float32, shape=(2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype) * 5


def denoise(scheduler, sample: torch.Tensor, start: int = 0, generator=None, **step_kwargs) -> list[tuple]:
    """Run scale_model_input + step over timesteps[start:]; return (model input, prev, x0 pred) per step."""
    records = []
    for i, t in enumerate(scheduler.timesteps[start:]):
        model_input = scheduler.scale_model_input(sample, t)
        out = scheduler.step(fake_model(model_input, i), t, sample, generator=generator, **step_kwargs)
        sample = out.prev_sample
        records.append((model_input, out.prev_sample, getattr(out, "pred_original_sample", None)))
    return records


def assert_loops_match(ours: list[tuple], ref: list[tuple], tol: float = REL_TOL) -> float:
    """Every step's tensors agree in dtype and within `tol` relative error; returns the worst error."""
    assert len(ours) == len(ref)
    worst = 0.0
    for step, (a_row, b_row) in enumerate(zip(ours, ref)):
        for a, b in zip(a_row, b_row):
            if b is None:
                assert a is None
                continue
            assert a.dtype == b.dtype, (step, a.dtype, b.dtype)
            err = rel_err(a, b)
            assert err <= tol, f"step {step}: relative error {err:.3g} > {tol}"
            worst = max(worst, err)
    return worst
