"""An fp8 UNet: the linear layers of the transformer blocks run as float8 (e4m3) matrix products.

Weights are quantised once, per output row (`scale = max|row| / 448`); activations are quantised per token on the
fly, and `torch._scaled_mm` multiplies the two fp8 matrices with both scale vectors, accumulating in float32 and
writing bfloat16 (the row-wise recipe torchao calls `Float8DynamicActivationFloat8WeightConfig(PerRow())`, written
here with torch's own float8 dtype and kernel: no extra dependency). `torch._scaled_mm` runs on CPUs too (same
formula; CPU tests run it) and on CUDA GPUs of compute capability 8.9 or newer (Ada, Hopper), where the fp8 matrix
units double the bf16 rate. Convolutions, norms, the time/added embeddings and the VAE and text encoders stay in
their dtype.

It changes the function slightly (3 mantissa bits per element): images stay near the bf16 ones but not within float
rounding; `tests/models/test_fp8.py` and the README state the measured bound. Quantising is one-way: the bf16
weights of the quantised layers are dropped (reload the UNet to go back).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# torch._scaled_mm on CUDA needs both matrix dimensions of the weight to be multiples of 16
_ALIGN = 16
_EPS = 1e-12


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> (fp8 codes (N, K), float32 scales (N,)) with weight ~= codes * scales[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=_EPS)
    codes = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return codes, scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight fp8 codes and row scales stand for, in `dtype`."""
    return (codes.float() * scale[:, None]).to(dtype)


def fp8_linear(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (..., K) @ W.T + bias for W = codes * scale (rows): x is quantised per row to e4m3 and both go through
    `torch._scaled_mm` (float32 accumulation, bfloat16 out); the result is in x's dtype."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])  # (M, K)
    x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=_EPS)  # (M, 1)
    x_codes = (rows.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    out = torch._scaled_mm(
        x_codes, codes.t(), scale_a=x_scale, scale_b=scale.view(1, -1), bias=bias, out_dtype=torch.bfloat16
    )  # (M, N)
    return out.to(x.dtype).reshape(*shape[:-1], codes.shape[0])


class Fp8Linear(nn.Module):
    """A Linear layer whose weight is fp8 codes with one float32 scale per output row; see `fp8_linear`.

    `weight` (fp8), `weight_scale` and `bias` (bfloat16, what `_scaled_mm` adds) are buffers. `model.to(dtype)` leaves
    them as they are (only devices change), so casting a quantised UNet cannot spoil the codes.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", bias.detach().to(torch.bfloat16) if bias is not None else None)
        # dimensions the CUDA kernel takes; others (tiny test models) multiply the dequantised weight
        self.aligned = self.in_features % _ALIGN == 0 and self.out_features % _ALIGN == 0

    @classmethod
    def from_linear(cls, layer: nn.Module) -> Fp8Linear:
        """Quantise an nn.Linear (or a fused projection: anything with `weight` (N, K) and `bias`)."""
        codes, scale = quantize_rows(layer.weight)
        return cls(codes, scale, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aligned or x.device.type == "cpu":
            return fp8_linear(x, self.weight, self.weight_scale, self.bias)
        return self.dequantized_forward(x)

    def dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x times the dequantised weight in x's dtype (for sizes the fp8 kernel does not take)."""
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, dequantize_rows(self.weight, self.weight_scale, x.dtype), bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Fp8Linear:
        # what `fn` does to a float tensor on the layer's device tells the target device (a dtype- or layout-only
        # conversion keeps it); the codes and scales keep their dtypes
        device = fn(torch.zeros((), device=self.weight.device)).device
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 per-row"


def linear_layers(model: nn.Module, within: tuple[type[nn.Module], ...]) -> list[tuple[nn.Module, str]]:
    """(parent, child name) of every nn.Linear or fused projection inside a module of a `within` type."""
    from .attention import FusedLinear

    found = []
    for block in model.modules():
        if not isinstance(block, within):
            continue
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, (nn.Linear, FusedLinear)):
                    found.append((parent, name))
    return found


def quantize_fp8(model: nn.Module, within: tuple[type[nn.Module], ...] | None = None) -> int:
    """Replace the linear layers inside `within` modules (default: the UNet's transformer blocks) by `Fp8Linear`;
    one-way. Returns the number of layers quantised. LoRA adapters must be fused and unloaded (or unloaded) first."""
    from .attention import Transformer2DModel
    from .lora import adapted_layers

    if any(True for _ in adapted_layers(model)):
        raise ValueError(
            "fp8 quantisation of a model with LoRA adapters loaded: call pipe.fuse_lora() then "
            "pipe.unload_lora_weights() (keeps them baked in), or unload them, before pipe.optimize(fp8=True)."
        )
    layers = linear_layers(model, within or (Transformer2DModel,))
    for parent, name in layers:
        setattr(parent, name, Fp8Linear.from_linear(getattr(parent, name)))
    return len(layers)


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds fp8 layers."""
    return any(isinstance(m, Fp8Linear) for m in model.modules())
