"""The UNet's down, mid and up blocks (diffusers' DownBlock2D / CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn,
UpBlock2D / CrossAttnUpBlock2D), built from resnets and transformers by `UNet2DConditionModel`, and FreeU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest spatial frequencies (a (2*threshold)^2 square around DC) of (B, C, H, W) by `scale`; computed
    in float32, returned in x's dtype. FreeU, Si et al. 2023 (arXiv:2309.11497), as diffusers' `fourier_filter`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape, device=x.device)
    mask[..., h // 2 - threshold : h // 2 + threshold, w // 2 - threshold : w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def apply_freeu(
    resolution_idx: int, x: torch.Tensor, skip: torch.Tensor, s1: float, s2: float, b1: float, b2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FreeU on the first two up blocks: backbone features' first half of channels times b, skip features'
    low frequencies times s (diffusers' `apply_freeu`)."""
    if resolution_idx not in (0, 1):
        return x, skip
    b, s = (b1, s1) if resolution_idx == 0 else (b2, s2)
    half = x.shape[1] // 2
    x = torch.cat([x[:, :half] * b, x[:, half:]], dim=1)
    return x, fourier_filter(skip, threshold=1, scale=s)


class DownBlock(nn.Module):
    """DownBlock2D / CrossAttnDownBlock2D: resnets (each followed by a transformer in the cross-attention
    variant), then an optional stride-2 downsampler. Returns the output and one skip tensor per stage."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, downsampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.downsamplers = nn.ModuleList([downsampler]) if downsampler is not None else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module]):
        super().__init__()
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: Any) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


class UpBlock(nn.Module):
    """UpBlock2D / CrossAttnUpBlock2D: each resnet takes the running tensor concatenated with one skip tensor
    (last in, first out), a transformer follows in the cross-attention variant; then an optional upsampler.

    FreeU is on when `s1`, `s2`, `b1` and `b2` are all set (and non-zero, as diffusers tests them):
    `UNet2DConditionModel.enable_freeu` sets them; `resolution_idx` is the block's index from the bottom."""

    def __init__(
        self,
        resnets: list[nn.Module],
        attentions: list[nn.Module] | None,
        upsampler: nn.Module | None,
        resolution_idx: int = 0,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None
        self.resolution_idx = resolution_idx
        self.s1 = self.s2 = self.b1 = self.b2 = None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: Any,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        freeu = self.s1 and self.s2 and self.b1 and self.b2
        for i, resnet in enumerate(self.resnets):
            skip = skips[-1 - i]
            if freeu:
                x, skip = apply_freeu(self.resolution_idx, x, skip, self.s1, self.s2, self.b1, self.b2)
            x = torch.cat([x, skip], dim=1)  # (B, C + C_skip, H, W)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
