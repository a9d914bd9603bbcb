"""The fp8 UNet (`models/fp8.py`): weights quantised and dequantised per row, the fp8 product equal to its formula,
quantisation kept through `.to(dtype)`, and the images of an fp8 UNet within a stated bound of the bf16 ones (tiny
fixture: tests/pipelines/test_fast.py)."""

from __future__ import annotations

import copy

import torch
from reference import tiny_unet_inputs, unet_pair

from sdxl.models.fp8 import (
    FP8,
    FP8_MAX,
    Fp8Linear,
    dequantize_rows,
    fp8_linear,
    is_quantized,
    quantize_fp8,
    quantize_rows,
)


def test_rows_quantise_and_dequantise():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 64, generator=g) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different size
    codes, scale = quantize_rows(weight)
    assert codes.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == (48,)
    assert torch.equal(codes.float().abs().amax(dim=1), torch.full((48,), FP8_MAX))  # each row uses the full range
    back = dequantize_rows(codes, scale)
    # e4m3: 3 mantissa bits, so each element within 2^-4 of its magnitude, whatever the row's scale
    assert ((back - weight).abs() <= weight.abs() * 2**-4 + scale[:, None] * 2**-9).all()


def test_fp8_product_is_its_formula():
    g = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(3, 37, 64, generator=g), torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    codes, scale = quantize_rows(weight)
    out = fp8_linear(x, codes, scale, bias.bfloat16())
    rows = x.reshape(-1, 64)
    x_scale = rows.abs().amax(dim=1, keepdim=True) / FP8_MAX
    x_back = (rows / x_scale).to(FP8).float() * x_scale
    expected = (x_back @ dequantize_rows(codes, scale).t() + bias.bfloat16().float()).bfloat16().float()
    assert out.shape == (3, 37, 48) and out.dtype == torch.float32
    assert torch.allclose(out.reshape(-1, 48), expected, rtol=2**-7, atol=1e-2)
    reference = x @ weight.t() + bias
    assert ((out - reference).norm() / reference.norm()) < 0.05  # what fp8 costs on random data


def test_layers_stay_quantised_through_casts():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    fp8 = Fp8Linear.from_linear(layer)
    fp8.to(torch.float16)
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.dtype == torch.float32 and fp8.bias.dtype == torch.bfloat16
    x = torch.randn(5, 64)
    expected = layer(x).detach()
    assert ((fp8(x) - expected).norm() / expected.norm()) < 0.05
    dequantised = fp8.dequantized_forward(x)  # the path of sizes the fp8 kernel does not take: weights only
    assert ((dequantised - expected).norm() / expected.norm()) < 0.03


def test_quantize_the_transformer_linears_only():
    _, unet = unet_pair("base")
    bf16 = copy.deepcopy(unet).to(torch.bfloat16)
    linears = [m for blk in unet.modules() if type(blk).__name__ == "Transformer2DModel" for m in blk.modules()
               if isinstance(m, torch.nn.Linear)]
    count = quantize_fp8(unet.to(torch.bfloat16))
    assert count == len(linears) and is_quantized(unet) and not is_quantized(bf16)
    assert isinstance(unet.time_embedding.linear_1, torch.nn.Linear) and unet.conv_in.weight.dtype == torch.bfloat16
    assert unet.dtype == torch.bfloat16  # the model reports its compute dtype
    *args, added = tiny_unet_inputs(2, torch.bfloat16)
    with torch.no_grad():
        out, ref = unet(*args, added_cond_kwargs=added).sample.float(), bf16(*args, added_cond_kwargs=added).sample.float()
    assert 1e-3 < ((out - ref).norm() / ref.norm()) < 0.06  # measured 0.03 on this UNet


def test_a_dtype_or_layout_conversion_keeps_the_device():
    """`.to(dtype)` / `.to(memory_format=...)` on an fp8 layer away from the CPU leaves it where it is (optimize()
    converts to channels_last after quantising); `.to(device)` moves it (here to the meta device)."""
    fp8 = Fp8Linear.from_linear(torch.nn.Linear(64, 32)).to("meta")
    assert fp8.weight.device.type == "meta"
    for convert in (lambda m: m.to(torch.float16), lambda m: m.to(memory_format=torch.channels_last),
                    lambda m: m.half(), lambda m: m.float()):
        convert(fp8)
        assert {t.device.type for t in fp8.buffers()} == {"meta"}
