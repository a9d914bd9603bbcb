"""Which PyTorch SDPA kernel runs attention of each shape: explicit state an `Attention` layer holds
(`layer.kernels`, set by `pipe.optimize()` through `set_attention_kernels`), read by the one attention function
(`layers.attention`). No module-level state: a layer without kernels runs PyTorch's own choice.

PyTorch picks a scaled-dot-product kernel (flash, memory-efficient, cuDNN, math) by a fixed priority order; which one
is fastest depends on the shape (SDXL's self-attention over 4096 tokens with 64-wide heads, its cross-attention over 77
text tokens, the VAE's single 512-wide head over 16384 tokens) and the GPU. `AttentionKernels.tune` times every
candidate on each shape seen while `recording` and keeps the fastest; the choice is then fixed, so a compiled or
CUDA-graph-captured UNet keeps it. All kernels compute the same function (they differ in float rounding).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.nn.attention import SDPBackend

# (device type, dtype, q shape, k shape): what the kernel choice depends on
ShapeKey = tuple[str, torch.dtype, tuple[int, ...], tuple[int, ...]]

CUDA_CANDIDATES = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
)


def shape_key(q: torch.Tensor, k: torch.Tensor) -> ShapeKey:
    """The key of an attention call: q (B, heads, Lq, d), k (B, heads, Lk, d)."""
    return (q.device.type, q.dtype, tuple(q.shape), tuple(k.shape))


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of `fn()` on `device` (CUDA events on a GPU, the host clock elsewhere), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _sdpa_with(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A call of SDPA on (q, k, v) restricted to `backend` (RuntimeError when it cannot run them)."""

    def run() -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return run


class AttentionKernels:
    """The SDPA kernel(s) for each attention shape.

    `choices` maps a `shape_key` to backends in priority order (the first one that supports the inputs runs);
    `default` is used for shapes not in it (None: PyTorch's own order). While `recording` is True the attention
    function adds each shape it runs to `seen`; `tune()` then times `candidates` on those shapes. Record and tune
    eagerly (a warm-up call), never while compiling or capturing a CUDA graph.
    """

    def __init__(
        self,
        choices: dict[ShapeKey, tuple[SDPBackend, ...]] | None = None,
        default: Iterable[SDPBackend] | None = None,
        candidates: Iterable[SDPBackend] = CUDA_CANDIDATES,
    ):
        self.choices: dict[ShapeKey, tuple[SDPBackend, ...]] = dict(choices or {})
        self.default = tuple(default) if default is not None else None
        self.candidates = tuple(candidates)
        if not self.candidates:
            raise ValueError("AttentionKernels needs at least one candidate backend (e.g. SDPBackend.MATH).")
        self.recording = False
        self.seen: set[ShapeKey] = set()

    def backends(self, q: torch.Tensor, k: torch.Tensor) -> tuple[SDPBackend, ...] | None:
        """The backends for this call's shape (None: PyTorch's own choice)."""
        key = shape_key(q, k)
        if self.recording:
            self.seen.add(key)
        return self.choices.get(key, self.default)

    def untuned(self) -> list[ShapeKey]:
        """Shapes seen but not tuned yet."""
        return sorted((k for k in self.seen if k not in self.choices), key=repr)

    def tune(self, measure: Callable[[Callable[[], object], torch.device], float] = time_call) -> dict[ShapeKey, float]:
        """Time every candidate backend on each untuned shape (random inputs of that shape) and keep the fastest.

        `measure(fn, device)` returns seconds. A backend that cannot run a shape (flash with 512-wide heads, cuDNN on
        a CPU) is skipped. Returns {shape: seconds of the chosen kernel}.
        """
        timings: dict[ShapeKey, float] = {}
        for key in self.untuned():
            device_type, dtype, q_shape, k_shape = key
            device = torch.device(device_type)
            q = torch.randn(q_shape, device=device, dtype=dtype)
            k, v = torch.randn(k_shape, device=device, dtype=dtype), torch.randn(k_shape, device=device, dtype=dtype)
            best: tuple[float, SDPBackend] | None = None
            for backend in self.candidates:
                try:
                    seconds = measure(_sdpa_with(backend, q, k, v), device)
                except RuntimeError:  # this kernel does not take this shape/dtype/device
                    continue
                if best is None or seconds < best[0]:
                    best = (seconds, backend)
            if best is None:
                raise RuntimeError(f"No candidate SDPA kernel {self.candidates} runs attention of shape {key}.")
            self.choices[key] = (best[1],)
            timings[key] = best[0]
        return timings

    def describe(self) -> dict[str, str]:
        """{"q (B, h, Lq, d) k (...) dtype": backend name} for reports."""
        return {
            f"{dev} {str(dtype).removeprefix('torch.')} q{list(q)} k{list(k)}": "/".join(b.name for b in backends)
            for (dev, dtype, q, k), backends in sorted(self.choices.items(), key=lambda item: repr(item[0]))
        }
