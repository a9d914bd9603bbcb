"""What the denoising loop calls in place of `pipe.unet` after `pipe.optimize()`: the UNet's explicit-tensor
`predict`, optionally compiled, with the attention kernels tuned per shape, and on CUDA replayed from a CUDA graph
captured once per input signature (sizes, batch, dtypes: static shapes), so a 30-step call launches 30 graphs
instead of ~60,000 kernels from Python.

Anything the runner does not capture goes to the plain UNet call, unchanged: IP-Adapter images, LoRA adapters,
`cross_attention_kwargs`, a UNet other than the one it was built for (`pipe.unet` replaced). The capture itself is a
function (`capture_cuda_graph`), so the CPU tests drive the whole logic (keys, cache, static buffers, fallbacks) with
a stand-in that replays by re-running.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sdxl.models.lora import adapted_layers, adds_adapter_output
from sdxl.models.sdpa_kernels import AttentionKernels

# The UNet inputs a graph is captured for, in `predict`'s order.
INPUT_NAMES = ("sample", "timesteps", "context", "text_embeds", "time_ids", "timestep_cond")

Replay = Callable[[], None]
Capture = Callable[[Callable[..., torch.Tensor], dict[str, torch.Tensor | None]], tuple[Replay, torch.Tensor]]


def capture_cuda_graph(
    fn: Callable[..., torch.Tensor], static: dict[str, torch.Tensor | None], warmup: int = 2
) -> tuple[Replay, torch.Tensor]:
    """Warm `fn(**static)` up on a side stream (allocator, cuBLAS/cuDNN plans, a compiled function's first call),
    then capture one call into a CUDA graph. Returns (replay, the static output tensor replay rewrites)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(**static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(**static)
    return graph.replay, out


@dataclass
class Captured:
    """One captured signature: the static input buffers, the replay, and the static output."""

    static: dict[str, torch.Tensor | None]
    replay: Replay
    out: torch.Tensor


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """Where `module`'s weights live (each parameter's and buffer's address and dtype): a captured graph reads them
    there, so a change (`.to()`, a cast, an offload round trip, adapters added) makes every captured graph stale."""
    return tuple((t.data_ptr(), t.dtype) for t in itertools.chain(module.parameters(), module.buffers()))


def signature(inputs: Mapping[str, torch.Tensor | None]) -> tuple:
    """The static-shape key of one UNet call: each input's shape, dtype and device (None for an absent input)."""
    return tuple(
        None if (t := inputs[name]) is None else (tuple(t.shape), t.dtype, str(t.device)) for name in INPUT_NAMES
    )


class UNetRunner:
    """Runs `unet.predict` for the denoising loop, in diffusers' UNet call form.

    `predict` is `unet.predict` or a compiled version of it; `kernels` (tuned per shape on CUDA before the first
    compiled/captured call of a signature) and `channels_last` (inputs converted) come from `optimize()`;
    `cuda_graphs` captures each signature once (at most `max_graphs` kept, least recently used dropped: each holds
    its activations' memory). `capture` is `capture_cuda_graph` (tests pass a stand-in).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        predict: Callable[..., torch.Tensor] | None = None,
        kernels: AttentionKernels | None = None,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        max_graphs: int = 4,
        capture: Capture = capture_cuda_graph,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.unet = unet
        self.predict = predict if predict is not None else unet.predict
        self.kernels = kernels
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.capture = capture
        self.graphs: OrderedDict[tuple, Captured] = OrderedDict()
        self.prepared: set[tuple] = set()  # signatures whose attention kernels are tuned
        self.plain_calls = 0  # calls that went to the plain UNet (tests and reports read it)
        self.fingerprint: tuple | None = None  # weights_fingerprint of the UNet the graphs were captured with

    def reset(self) -> None:
        """Drop every captured graph (and its memory); the next call of each signature captures again."""
        self.graphs.clear()
        self.prepared.clear()

    def bind(self, unet: Any) -> Any:
        """What the loop should call for this pipeline call: this runner, or `unet` itself when the runner cannot
        stand in for it (another UNet, or LoRA adapters adding their outputs: their choice and scale change per
        call and a graph would freeze them; inactive or fused adapters change nothing a graph reads). Captured
        graphs are dropped when the UNet's weights have moved since (`weights_fingerprint`). Checked once per
        pipeline call, not per step."""
        if unet is not self.unet or any(adds_adapter_output(layer) for layer in adapted_layers(unet)):
            return unet
        fingerprint = weights_fingerprint(unet)
        if fingerprint != self.fingerprint:
            self.reset()
            self.fingerprint = fingerprint
        return self

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: Mapping[str, Any] | None = None,
        *,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        added = dict(added_cond_kwargs or {})
        if cross_attention_kwargs or added.get("image_embeds") is not None or kwargs or return_dict:
            self.plain_calls += 1
            return self.unet(
                sample, timestep, encoder_hidden_states, added_cond_kwargs, timestep_cond=timestep_cond,
                cross_attention_kwargs=cross_attention_kwargs, return_dict=return_dict, **kwargs,
            )
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(float(timestep), device=sample.device)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        inputs = {
            "sample": sample, "timesteps": timestep, "context": encoder_hidden_states,
            "text_embeds": added.get("text_embeds"), "time_ids": added.get("time_ids"), "timestep_cond": timestep_cond,
        }
        key = signature(inputs)
        if key not in self.prepared:
            self._tune_kernels(inputs)
            self.prepared.add(key)
        if not self.cuda_graphs:
            return (self.predict(**inputs).contiguous(),)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self._capture(inputs)
            self.graphs[key] = captured
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        for name, tensor in inputs.items():
            if tensor is not None:
                captured.static[name].copy_(tensor)
        captured.replay()
        # a copy: the next replay rewrites the static output, and schedulers may keep model outputs (PNDM, LMS)
        return (captured.out.clone(memory_format=torch.contiguous_format),)

    def _tune_kernels(self, inputs: dict[str, torch.Tensor | None]) -> None:
        """Before the first compiled/captured call of a signature: one eager forward records the attention shapes,
        then each new shape's SDPA kernels are timed (CUDA only; elsewhere PyTorch's choice stands)."""
        kernels = self.kernels
        if kernels is None or inputs["sample"].device.type != "cuda":
            return
        kernels.recording = True
        try:
            self.unet.predict(**inputs)
        finally:
            kernels.recording = False
        kernels.tune()

    def _capture(self, inputs: dict[str, torch.Tensor | None]) -> Captured:
        static = {name: None if t is None else t.clone() for name, t in inputs.items()}
        if static["sample"] is not None and self.channels_last:
            static["sample"] = static["sample"].contiguous(memory_format=torch.channels_last)
        replay, out = self.capture(self.predict, static)
        return Captured(static, replay, out)
