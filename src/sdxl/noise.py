"""Gaussian noise drawn exactly as diffusers' `randn_tensor`, so one seed gives the same image in both.

A leaf module (torch only) that models (the VAE posterior), schedulers (stochastic steps) and pipelines (initial
latents) share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generator = torch.Generator | list[torch.Generator] | None


def randn_tensor(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard-normal noise of `shape` in `dtype` on `device`.

    A CPU generator draws on the CPU and the result moves to `device` (portable seeds); a generator on another
    device type than `device` is an error. A list of generators draws one batch row from each, in order.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, list) else generator).device.type
        if gen_type != device.type and gen_type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_type != device.type:
            raise ValueError(
                f"Cannot draw noise for a {device.type} tensor from a {gen_type} generator: use a CPU generator "
                f"(portable) or one on {device.type}."
            )
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per batch item")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(rows, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)
