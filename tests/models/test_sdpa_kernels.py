"""The attention kernel choice per shape (`AttentionKernels`, read by `layers.attention`): a named backend really
runs, tuning keeps the fastest candidate that can run each shape, and the UNet's layers read the table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import tiny_unet_inputs, unet_pair
from torch.nn.attention import SDPBackend

from sdxl.models.layers import attention
from sdxl.models.sdpa_kernels import AttentionKernels, shape_key, time_call


def _qkv(lq=64, lk=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, lq, 32, generator=g), torch.randn(2, 4, lk, 32, generator=g), torch.randn(
        2, 4, lk, 32, generator=g
    )


def test_the_named_backend_runs():
    q, k, v = _qkv()
    expected = F.scaled_dot_product_attention(q, k, v)
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        kernels = AttentionKernels({shape_key(q, k): (backend,)})
        assert torch.allclose(attention(q, k, v, kernels), expected, atol=1e-6)
    # a backend the CPU does not have fails: the table is really what runs
    with pytest.raises(RuntimeError, match="No viable backend"):
        attention(q, k, v, AttentionKernels({shape_key(q, k): (SDPBackend.CUDNN_ATTENTION,)}))
    other_q, other_k, other_v = _qkv(lq=32)  # another shape: PyTorch's own choice
    kernels = AttentionKernels({shape_key(q, k): (SDPBackend.CUDNN_ATTENTION,)})
    assert torch.equal(attention(other_q, other_k, other_v, kernels), F.scaled_dot_product_attention(
        other_q, other_k, other_v))


def test_tune_keeps_the_fastest_kernel_per_shape(monkeypatch):
    kernels = AttentionKernels(candidates=(SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH, SDPBackend.FLASH_ATTENTION))
    kernels.recording = True
    (q1, k1, v1), (q2, k2, v2) = _qkv(lq=64), _qkv(lq=16)
    attention(q1, k1, v1, kernels), attention(q2, k2, v2, kernels)
    kernels.recording = False
    assert kernels.untuned() == sorted([shape_key(q1, k1), shape_key(q2, k2)], key=repr)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v):  # which backend the timed call allowed, and on which shape
        calls.append((torch._C._get_math_sdp_enabled(), torch._C._get_flash_sdp_enabled(), q.shape[2]))
        return sdpa(q, k, v)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)

    def fake_measure(fn, device):  # flash is "faster" on the long shape, math on the short one
        fn()  # cuDNN raises here (no CPU kernel) and is skipped
        math, flash, length = calls[-1]
        assert math != flash
        return (1.0 if flash else 2.0) if length == 64 else (2.0 if flash else 1.0)

    timings = kernels.tune(measure=fake_measure)
    assert kernels.choices == {shape_key(q1, k1): (SDPBackend.FLASH_ATTENTION,),
                               shape_key(q2, k2): (SDPBackend.MATH,)}
    assert set(timings.values()) == {1.0} and not kernels.untuned()
    assert "FLASH_ATTENTION" in kernels.describe().values()
    assert time_call(lambda: attention(q1, k1, v1, kernels), q1.device, repeats=2, warmup=1) > 0
    with pytest.raises(ValueError, match="at least one candidate"):
        AttentionKernels(candidates=())
    only_cudnn = AttentionKernels(candidates=(SDPBackend.CUDNN_ATTENTION,))
    only_cudnn.seen.add(shape_key(q1, k1))
    with pytest.raises(RuntimeError, match="No candidate SDPA kernel"):
        only_cudnn.tune()


def test_unet_layers_read_their_kernels():
    """`set_attention_kernels` gives every attention layer the table; recording sees the UNet's shapes. (Compiled with
    fullgraph=True under a table: tests/pipelines/test_fast.py's compile case.)"""
    _, unet = unet_pair("base")
    kernels = AttentionKernels(default=[SDPBackend.MATH])
    *args, added = tiny_unet_inputs()
    with torch.no_grad():
        plain = unet(*args, added_cond_kwargs=added).sample
        unet.set_attention_kernels(kernels)
        kernels.recording = True
        chosen = unet(*args, added_cond_kwargs=added).sample
    # the tiny UNet attends at its 8x8 level: self-attention (64 tokens) and cross-attention (7 text tokens)
    assert kernels.seen == {("cpu", torch.float32, (2, 4, 64, 16), (2, 4, 64, 16)),
                            ("cpu", torch.float32, (2, 4, 64, 16), (2, 4, 7, 16))}
    assert torch.allclose(chosen, plain, atol=1e-5)
    unet.set_attention_kernels(None)
    assert all(layer.kernels is None for layer in unet._attention_layers().values())
