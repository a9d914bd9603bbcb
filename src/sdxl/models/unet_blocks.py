"""The UNet's down, mid and up blocks (diffusers' DownBlock2D / CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn,
UpBlock2D / CrossAttnUpBlock2D), built from resnets and transformers by `UNet2DConditionModel`."""

from __future__ import annotations

import torch
from torch import nn


class DownBlock(nn.Module):
    """DownBlock2D / CrossAttnDownBlock2D: resnets (each followed by a transformer in the cross-attention
    variant), then an optional stride-2 downsampler. Returns the output and one skip tensor per stage."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, downsampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.downsamplers = nn.ModuleList([downsampler]) if downsampler is not None else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
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

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


class UpBlock(nn.Module):
    """UpBlock2D / CrossAttnUpBlock2D: each resnet takes the running tensor concatenated with one skip tensor
    (last in, first out), a transformer follows in the cross-attention variant; then an optional upsampler."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, upsampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions is not None else None
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)  # (B, C + C_skip, H, W)
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
