"""Parity of our AutoencoderKL with diffusers' on the same weights (tiny config; the full SDXL VAE is slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import reference
import torch

from sdxl.models.vae import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution, VAEConfig

_REF: list[torch.nn.Module] = []


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread on the shared, loaded 2-core machine (see test_unet.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(expected: torch.Tensor, actual: torch.Tensor) -> float:
    expected, actual = expected.double(), actual.double()
    return ((expected - actual).norm() / expected.norm()).item()


def diffusers_vae():
    if not _REF:
        _REF.append(reference.make_vae())
    return _REF[0]


def our_vae() -> AutoencoderKL:
    ref = diffusers_vae()
    ours = AutoencoderKL(VAEConfig.from_dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def images(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (24, 40)])
def test_encode_matches_diffusers(size):
    ref, ours = diffusers_vae(), our_vae()
    x = images(size=size)
    with torch.no_grad():
        theirs = ref.encode(x).latent_dist
        mine = ours.encode(x).latent_dist
        assert isinstance(mine, DiagonalGaussianDistribution)
        assert mine.mean.shape == theirs.mean.shape  # odd sizes: the pad-right/bottom downsampler rounds up
        for name in ("mean", "std", "var", "logvar"):
            assert rel_err(getattr(theirs, name), getattr(mine, name)) < 1e-5, name
        assert rel_err(theirs.mode(), mine.mode()) < 1e-5
        drawn_theirs = theirs.sample(generator=torch.Generator().manual_seed(7))
        drawn_mine = mine.sample(generator=torch.Generator().manual_seed(7))
    assert drawn_mine.dtype == drawn_theirs.dtype
    assert rel_err(drawn_theirs, drawn_mine) < 1e-5


def test_sample_with_a_generator_list_draws_per_row_as_diffusers():
    ref, ours = diffusers_vae(), our_vae()
    x = images()
    with torch.no_grad():
        theirs = ref.encode(x).latent_dist.sample([torch.Generator().manual_seed(s) for s in (1, 2)])
        mine = ours.encode(x).latent_dist.sample([torch.Generator().manual_seed(s) for s in (1, 2)])
        # the second row equals a single-image draw from generator 2
        alone = ours.encode(x[1:]).latent_dist.sample(torch.Generator().manual_seed(2))
    assert rel_err(theirs, mine) < 1e-5
    assert torch.allclose(mine[1:], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        ours.encode(x).latent_dist.sample([torch.Generator() for _ in range(3)])


def test_sample_refuses_a_generator_on_another_accelerator():
    class CudaGenerator:  # stands in for torch.Generator("cuda") on this CPU-only machine
        device = torch.device("cuda")

    posterior = DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match="use a CPU generator"):
        posterior.sample(CudaGenerator())


def test_logvar_is_clamped_as_diffusers():
    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), -100.0)], dim=1)
    moments[:, 4:, 0, 0] = 100.0
    ours = DiagonalGaussianDistribution(moments)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as Theirs

    theirs = Theirs(moments)
    assert torch.equal(ours.logvar, theirs.logvar) and torch.equal(ours.std, theirs.std)
    assert ours.logvar.min() == -30.0 and ours.logvar.max() == 20.0


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_decode_matches_diffusers(size):
    ref, ours = diffusers_vae(), our_vae()
    z = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref.decode(z).sample
        out = ours.decode(z)
    assert isinstance(out, DecoderOutput)
    assert out.sample.shape == expected.shape
    assert rel_err(expected, out.sample) < 1e-5


def test_forward_and_call_forms():
    ref, ours = diffusers_vae(), our_vae()
    x = images()
    with torch.no_grad():
        encoded = ours.encode(x)
        assert isinstance(encoded, AutoencoderKLOutput)
        assert encoded[0] is encoded.latent_dist and encoded["latent_dist"] is encoded.latent_dist
        (posterior,) = ours.encode(x, return_dict=False)
        assert torch.equal(posterior.mean, encoded.latent_dist.mean)
        z = posterior.mode()
        decoded = ours.decode(z)
        assert torch.equal(decoded[0], decoded.sample)
        assert torch.equal(ours.decode(z, return_dict=False)[0], decoded.sample)
        assert torch.equal(ours.decode(z, generator=torch.Generator()).sample, decoded.sample)
        assert rel_err(ref(x).sample, ours(x).sample) < 1e-5
        theirs = ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
        mine = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(5), return_dict=False)[0]
    assert rel_err(theirs, mine) < 1e-5


def test_parameter_count_and_keys_match_diffusers():
    ref, ours = diffusers_vae(), our_vae()
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize(
    "change",
    [
        {"mid_block_add_attention": False},
        {"use_quant_conv": False, "use_post_quant_conv": False},
        {"layers_per_block": 2, "latent_channels": 16},
    ],
    ids=["no-mid-attention", "no-quant-convs", "deeper"],
)
def test_config_variants_match_diffusers(change):
    from diffusers import AutoencoderKL as DiffusersVAE

    config = dataclasses.replace(VAEConfig.from_dict(diffusers_vae().config), **change)
    torch.manual_seed(0)
    ref = DiffusersVAE.from_config(config.to_dict()).eval()
    ref.set_default_attn_processor()
    ours = AutoencoderKL(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = images(batch=1)
    with torch.no_grad():
        assert rel_err(ref(x).sample, ours(x).sample) < 1e-5


def test_meta_construction_then_assign_load():
    ref = diffusers_vae()
    with torch.device("meta"):
        ours = AutoencoderKL(VAEConfig.from_dict(ref.config))
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    assert list(ours.buffers()) == []
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert rel_err(ref.decode(z).sample, ours.eval().decode(z).sample) < 1e-5


def test_config_reads_match_diffusers():
    ref, ours = diffusers_vae(), our_vae()
    for key in (
        "scaling_factor", "shift_factor", "force_upcast", "latents_mean", "latents_std", "latent_channels",
        "sample_size", "in_channels", "act_fn",
    ):  # fmt: skip
        assert getattr(ours.config, key) == ref.config[key], key
    assert list(ours.config.block_out_channels) == list(ref.config.block_out_channels)
    assert ours.post_quant_conv.weight.dtype == ours.dtype == torch.float32


def test_to_dict_round_trip_and_preset():
    config = VAEConfig.from_dict(diffusers_vae().config)
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    sdxl = VAEConfig.sdxl()
    assert VAEConfig.from_dict(sdxl.to_dict()) == sdxl
    assert (sdxl.scaling_factor, sdxl.force_upcast, sdxl.block_out_channels) == (0.13025, True, (128, 256, 512, 512))
    with_stats = dataclasses.replace(sdxl, latents_mean=[0.1] * 4, latents_std=[1.0] * 4)
    assert with_stats.latents_mean == (0.1,) * 4  # lists stored as tuples (the config is frozen and hashable)


@pytest.mark.parametrize(
    "key, value",
    [
        ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
        ("up_block_types", ["UpDecoderBlock2D"]),
        ("act_fn", "gelu"),
        ("norm_type", "spatial"),
    ],
)
def test_from_dict_rejects_what_we_cannot_run(key, value):
    d = dict(diffusers_vae().config)
    d[key] = value
    with pytest.raises(ValueError, match=key):
        VAEConfig.from_dict(d)


def test_from_dict_type_errors():
    d = dict(diffusers_vae().config, layers_per_block=[1, 1])
    with pytest.raises(TypeError, match="layers_per_block"):
        VAEConfig.from_dict(d)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)], ids=["bf16", "fp16"])
def test_half_precision_runs_and_stays_close(dtype, tol):
    ref, ours = diffusers_vae(), our_vae().to(dtype)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    x = images(batch=1)
    with torch.no_grad():
        decoded = ours.decode(z.to(dtype)).sample
        posterior = ours.encode(x.to(dtype)).latent_dist
        drawn = posterior.sample(torch.Generator().manual_seed(0))
        assert rel_err(ref.decode(z).sample, decoded) < tol
        assert rel_err(ref.encode(x).latent_dist.mean, posterior.mean) < tol
    assert decoded.dtype == posterior.mean.dtype == drawn.dtype == dtype  # noise drawn in the VAE dtype


def test_compile_fullgraph_traces_without_breaks():
    ours = our_vae()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = ours.decode(z).sample
        torch._dynamo.reset()
        actual = torch.compile(ours.decode, fullgraph=True, backend="eager")(z, return_dict=False)[0]
    assert torch.equal(expected, actual)


# --- full size (slow) ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_sdxl_vae_matches_diffusers():
    from diffusers import AutoencoderKL as DiffusersVAE

    config = VAEConfig.sdxl()
    torch.manual_seed(0)
    ref = DiffusersVAE.from_config(config.to_dict()).eval()
    ref.set_default_attn_processor()
    with torch.device("meta"):
        ours = AutoencoderKL(config)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    print(f"SDXL VAE: {ours.num_parameters():,} parameters")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 16, 16, generator=g)
    x = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
    with torch.no_grad():
        decode_err = rel_err(ref.decode(z).sample, ours.eval().decode(z).sample)
        encode_err = rel_err(ref.encode(x).latent_dist.mean, ours.encode(x).latent_dist.mean)
    print(f"full-size SDXL VAE, fp32: decode 16x16 latent rel err {decode_err:.2e}, encode 128x128 {encode_err:.2e}")
    assert decode_err < 1e-4 and encode_err < 1e-4
