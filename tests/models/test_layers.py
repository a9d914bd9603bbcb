"""The shared blocks against their diffusers counterparts, including settings the SDXL configs do not reach."""

from __future__ import annotations

import pytest
import torch

from sdxl.models.attention import Attention, FeedForward
from sdxl.models.layers import Downsample2D, ResnetBlock2D, Upsample2D, attention, config_from_dict, timestep_embedding


def rel_err(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return ((expected.double() - actual.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("dim, flip, shift", [(320, True, 0), (256, False, 1), (7, True, 0), (9, False, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 499.5, 999.0])
    expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert torch.equal(timestep_embedding(t, dim, flip, shift), expected)


def test_timestep_embedding_of_half_precision_ids_is_float32():
    from diffusers.models.embeddings import get_timestep_embedding

    ids = torch.tensor([1024.0, 768.0, 0.0, 64.0], dtype=torch.float16)
    ours = timestep_embedding(ids, 256)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, get_timestep_embedding(ids, 256, flip_sin_to_cos=True, downscale_freq_shift=0))


@pytest.mark.parametrize("c_in, c_out, temb, scale", [(8, 8, 16, 1.0), (8, 16, 16, 1.0), (16, 8, None, 2.0)])
def test_resnet_block_matches_diffusers(c_in, c_out, temb, scale):
    from diffusers.models.resnet import ResnetBlock2D as Theirs

    torch.manual_seed(0)
    theirs = Theirs(
        in_channels=c_in, out_channels=c_out, temb_channels=temb, groups=4, eps=1e-6, output_scale_factor=scale
    ).eval()
    ours = ResnetBlock2D(c_in, c_out, temb, groups=4, eps=1e-6, output_scale_factor=scale)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, c_in, 6, 5)
    emb = torch.randn(2, temb) if temb else None
    with torch.no_grad():
        assert rel_err(theirs(x, emb), ours(x, emb)) < 1e-6


@pytest.mark.parametrize("padding, size", [(1, (8, 8)), (1, (7, 9)), (0, (8, 8)), (0, (7, 9))])
def test_downsample_matches_diffusers(padding, size):
    from diffusers.models.downsampling import Downsample2D as Theirs

    torch.manual_seed(0)
    theirs = Theirs(4, use_conv=True, padding=padding, name="op")
    ours = Downsample2D(4, padding=padding)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 4, *size)
    with torch.no_grad():
        expected = theirs(x)
        assert torch.equal(ours(x), expected)


@pytest.mark.parametrize("output_size", [None, (9, 7), (10, 14)])
def test_upsample_matches_diffusers(output_size):
    from diffusers.models.upsampling import Upsample2D as Theirs

    torch.manual_seed(0)
    theirs = Theirs(4, use_conv=True)
    ours = Upsample2D(4)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 4, 5, 7)
    with torch.no_grad():
        expected = theirs(x, output_size)
        assert torch.equal(ours(x, output_size), expected)


@pytest.mark.parametrize("cross_dim", [None, 12])
def test_attention_matches_diffusers(cross_dim):
    from diffusers.models.attention_processor import Attention as Theirs
    from diffusers.models.attention_processor import AttnProcessor

    torch.manual_seed(0)
    theirs = Theirs(16, cross_attention_dim=cross_dim, heads=4, dim_head=8, processor=AttnProcessor()).eval()
    ours = Attention(16, heads=4, dim_head=8, cross_attention_dim=cross_dim)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 10, 16)
    context = torch.randn(2, 5, cross_dim) if cross_dim else None
    with torch.no_grad():
        assert rel_err(theirs(x, encoder_hidden_states=context), ours(x, context)) < 1e-6


def test_feed_forward_matches_diffusers():
    from diffusers.models.attention import FeedForward as Theirs

    torch.manual_seed(0)
    theirs = Theirs(16, activation_fn="geglu").eval()
    ours = FeedForward(16)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        assert rel_err(theirs(x), ours(x)) < 1e-6


def test_attention_function_is_scaled_softmax_attention():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    assert rel_err(expected, attention(q, k, v)) < 1e-6


def test_config_from_dict_type_error_names_the_class():
    from sdxl.models.unet import UNetConfig

    with pytest.raises(TypeError, match="UNetConfig.from_dict expects a dict"):
        config_from_dict(
            UNetConfig, "unet/config.json", class_name="UNet2DConditionModel", ignored=frozenset(), neutral={}
        )
