"""`pipe.optimize()`: the fast path, a set of switches that keep the images (each one tested against the plain path).

What each switch does (defaults in brackets; `FastPath` records what a call turned on):
- `fuse_projections` [on]: q|k|v of every self-attention and k|v of every cross-attention in one matrix product
  (the UNet's and the VAE's; `fuse_qkv_projections`). The separate projections become views of the fused matrix: no
  extra memory.
- `channels_last` [on]: UNet and VAE convolution weights (and the UNet's input) in NHWC, the layout cuDNN's tensor-core
  convolutions run natively; the transformer blocks then flatten tokens without a copy.
- `attention_kernels` [on]: each attention shape gets the fastest SDPA kernel (flash, memory-efficient, cuDNN, math),
  timed on the GPU before its first compiled/captured call. On a CPU PyTorch's own choice stands.
- `cuda_graphs` [on where the pipeline is on a CUDA GPU]: the UNet step is captured as a CUDA graph once per input
  signature (size, batch, dtype) and replayed each step. Needs the UNet to stay put (not with CPU offload).
- `compile` [off]: `torch.compile` of the UNet's `predict` with `fullgraph=True, dynamic=False` (a `CompileSettings`
  for the mode and inductor options). Text encoders, VAE and scheduler stay eager. The first call of each size
  compiles (minutes for the full-size UNet).
- `vae_dtype` ["auto": bfloat16 when the VAE is float16]: the VAE decodes in this dtype instead of float16 upcast to
  float32 (half the memory and time of the upcast decode; bfloat16 has float32's range, so SDXL's VAE does not
  overflow). float16 is taken too: the config's `force_upcast` is then cleared and a decode that still overflows is
  redone in float32 (`decode_latents`' NaN guard).
- `fp8` [off]: the UNet's transformer linear layers as float8 matrix products (`models/fp8.py`): one-way, and the
  images move a little (a stated bound, not float rounding). Needs a CUDA GPU of compute capability 8.9+ (or a CPU).

`unoptimize()` undoes everything but fp8. Call `optimize()` after `pipe.to(device, dtype)`. A later `.to()` keeps the
switches: the next call sees that the UNet's weights moved, fuses its projections again (a conversion copies the
fused matrix and its views apart) and captures new graphs; a `.to(dtype)` casts the VAE too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sdxl.models.fp8 import is_quantized, quantize_fp8
from sdxl.models.sdpa_kernels import AttentionKernels
from sdxl.pipelines.unet_runner import UNetRunner

_VAE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CompileSettings:
    """How `optimize(compile=...)` compiles the UNet: always `fullgraph=True` (our UNet traces whole) and
    `dynamic=False` (static shapes: each size/batch compiles once, as CUDA graphs need anyway).

    `mode` is one of torch.compile's modes, turned into inductor options (so `options` can add to it); leave
    "reduce-overhead"/"max-autotune" (inductor's own CUDA graphs) to runs without `cuda_graphs`. `options` are
    inductor config values (e.g. {"conv_1x1_as_mm": True}); `backend` "inductor" (tests use "eager"/"aot_eager").
    """

    mode: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.backend != "inductor" and (self.options or self.mode != "default"):
            raise ValueError(f"compile mode/options are inductor settings; backend {self.backend!r} takes none.")

    def compile(self, fn: Any) -> Any:
        """`fn` compiled with these settings."""
        if self.backend != "inductor":
            return torch.compile(fn, backend=self.backend, fullgraph=True, dynamic=False)
        from torch._inductor import list_mode_options

        options = {**list_mode_options(self.mode), **self.options}
        return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


@dataclass(frozen=True)
class FastPath:
    """What `optimize()` turned on (resolved: no "auto" left)."""

    fuse_projections: bool
    channels_last: bool
    attention_kernels: bool
    cuda_graphs: bool
    compile: CompileSettings | None
    vae_dtype: torch.dtype | None
    fp8: bool

    def describe(self) -> str:
        """One line for logs: the switches that are on."""
        on = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is True]
        if self.compile is not None:
            on.append(f"compile(mode={self.compile.mode})")
        if self.vae_dtype is not None:
            on.append(f"vae_dtype={str(self.vae_dtype).removeprefix('torch.')}")
        return ", ".join(on) or "nothing"


@dataclass
class _FastState:
    path: FastPath
    runner: UNetRunner
    kernels: AttentionKernels | None
    fused_vae: bool
    vae_undo: tuple[torch.dtype, Any, dict[str, torch.Tensor]] | None  # dtype, config, weights (CPU) before vae_dtype
    active: bool = True  # False once unoptimize() ran (pipelines made by from_pipe share this state)


def loop_unet(pipe: Any) -> Any:
    """What the denoising loop calls: the fast path's runner when `pipe.optimize()` set one and it can stand in for
    `pipe.unet` this call, else `pipe.unet`."""
    state = getattr(pipe, "_fast", None)
    if state is None or not state.active or getattr(pipe, "_offload", None) is not None:
        return pipe.unet
    if state.path.fuse_projections and pipe.unet is state.runner.unet and not state.path.fp8:
        _refuse_if_split(pipe.unet)
    return state.runner.bind(pipe.unet)


def _refuse_if_split(unet: Any) -> None:
    """After a `.to()` the fused matrices and the separate projections are separate copies (twice the memory, and an
    in-place change such as fuse_lora would reach one only): fuse again from the separate projections, which hold
    the current values."""
    for layer in unet.modules():
        if not getattr(layer, "fused_projections", False):
            continue
        fused, first = (layer.to_kv, layer.to_k) if layer.is_cross_attention else (layer.to_qkv, layer.to_q)
        if first.weight.data_ptr() != fused.weight.data_ptr():
            unet.unfuse_qkv_projections()
            unet.fuse_qkv_projections()
        return  # one layer tells: a conversion converts them all


class FastPathMixin:
    """`optimize()` / `unoptimize()` on the SDXL pipelines (they have `unet`, `vae`, `device`)."""

    @property
    def fast_path(self) -> FastPath | None:
        """What `optimize()` turned on, or None."""
        state = getattr(self, "_fast", None)
        return state.path if state is not None and state.active else None

    def optimize(
        self,
        *,
        fuse_projections: bool = True,
        channels_last: bool = True,
        attention_kernels: bool | AttentionKernels = True,
        cuda_graphs: bool | None = None,
        compile: bool | CompileSettings = False,
        vae_dtype: torch.dtype | str | None = "auto",
        fp8: bool = False,
        max_graphs: int = 4,
    ) -> FastPath:
        """Turn the fast path on (see this module's docstring for each switch); returns what is on.

        `cuda_graphs` None means on when the pipeline is on a CUDA GPU without CPU offload. `attention_kernels` may be
        an `AttentionKernels` with fixed choices. `max_graphs` bounds the captured signatures kept (each holds its
        activations' memory). Calling it again first undoes the previous call (fp8 stays).
        """
        unet = getattr(self, "unet", None)
        if unet is None:
            raise ValueError("optimize() needs the pipeline's unet.")
        if getattr(self, "_fast", None) is not None:
            self.unoptimize()
        device = unet.device
        offloaded = getattr(self, "_offload", None) is not None
        graphs = _resolve_cuda_graphs(cuda_graphs, device, offloaded)
        if fp8:
            _check_fp8_device(device)
        settings = CompileSettings() if compile is True else compile or None
        if settings is not None and not isinstance(settings, CompileSettings):
            raise TypeError(f"compile must be True, False or a CompileSettings, got {compile!r}")
        vae = getattr(self, "vae", None)
        target_vae_dtype = _resolve_vae_dtype(vae_dtype, vae)

        fused_vae = False
        if fuse_projections:
            fused_vae = hasattr(vae, "fuse_qkv_projections")
            self.fuse_qkv_projections(unet=True, vae=fused_vae)
        if fp8 and not is_quantized(unet):
            quantize_fp8(unet)
        if channels_last:
            for model in (unet, vae):
                if isinstance(model, torch.nn.Module):
                    model.to(memory_format=torch.channels_last)
        kernels = None
        if attention_kernels is not False:
            kernels = attention_kernels if isinstance(attention_kernels, AttentionKernels) else AttentionKernels()
            unet.set_attention_kernels(kernels)
        vae_undo = None
        if target_vae_dtype is not None:
            # a CPU copy of the weights (the VAE is small: 84 M parameters), so unoptimize() restores the exact bytes
            weights = {k: v.detach().to("cpu", copy=True) for k, v in vae.state_dict().items()}
            vae_undo = (vae.dtype, vae.config, weights)
            vae.to(dtype=target_vae_dtype)
            if target_vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
                vae.config = dataclasses.replace(vae.config, force_upcast=False)  # the NaN guard stays
        predict = settings.compile(unet.predict) if settings is not None else None
        runner = UNetRunner(
            unet, predict=predict, kernels=kernels, channels_last=channels_last, cuda_graphs=graphs,
            max_graphs=max_graphs,
        )
        path = FastPath(
            fuse_projections=fuse_projections, channels_last=channels_last, attention_kernels=kernels is not None,
            cuda_graphs=graphs, compile=settings, vae_dtype=target_vae_dtype, fp8=is_quantized(unet),
        )
        self._fast = _FastState(path, runner, kernels, fused_vae, vae_undo)
        return path

    def unoptimize(self) -> None:
        """Undo `optimize()`: separate projections, contiguous layouts, PyTorch's attention kernels, no graphs or
        compiled UNet, the VAE's dtype and config back. An fp8 UNet stays fp8 (reload it to get bf16 back)."""
        state = getattr(self, "_fast", None)
        self._fast = None
        if state is None or not state.active:
            return
        state.active = False  # for every pipeline sharing it (from_pipe)
        state.runner.reset()
        unet, vae, path = state.runner.unet, getattr(self, "vae", None), state.path
        if path.fuse_projections:  # on the models: the pipeline that fused them may be another one (from_pipe)
            unet.unfuse_qkv_projections()
            if state.fused_vae:
                vae.unfuse_qkv_projections()
            self.fusing_unet = self.fusing_vae = False
        if path.channels_last:
            for model in (unet, vae):
                if isinstance(model, torch.nn.Module):
                    model.to(memory_format=torch.contiguous_format)
        if state.kernels is not None:
            unet.set_attention_kernels(None)
        if state.vae_undo is not None:
            dtype, config, weights = state.vae_undo
            if vae.dtype != path.vae_dtype:  # a `.to(dtype)` since optimize() chose the VAE's dtype: keep that one
                dtype = vae.dtype
            vae.to(dtype=dtype)
            vae.load_state_dict(weights)
            vae.config = config


def _resolve_cuda_graphs(cuda_graphs: bool | None, device: torch.device, offloaded: bool) -> bool:
    if cuda_graphs is None:
        return device.type == "cuda" and not offloaded
    if cuda_graphs and offloaded:
        raise ValueError(
            "cuda_graphs=True with CPU offload: a captured graph needs the UNet to stay on the GPU. Call "
            "pipe.remove_all_hooks() and pipe.to('cuda') first, or leave cuda_graphs at None."
        )
    if cuda_graphs and device.type != "cuda":
        raise ValueError(
            f"cuda_graphs=True needs the pipeline on a CUDA GPU, but the UNet is on {device}: call pipe.to('cuda') "
            "before optimize(), or leave cuda_graphs at None (on where it can be)."
        )
    return bool(cuda_graphs)


def _check_fp8_device(device: torch.device) -> None:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(
                f"fp8=True needs float8 matrix units (CUDA compute capability 8.9+: Ada, Hopper); this GPU is "
                f"{major}.{minor}. Leave fp8 off (the rest of the fast path works here)."
            )
    elif device.type != "cpu":
        raise ValueError(f"fp8=True runs on CUDA GPUs (8.9+) and CPUs, not on {device.type}; leave fp8 off.")


def _resolve_vae_dtype(vae_dtype: torch.dtype | str | None, vae: Any) -> torch.dtype | None:
    """The dtype to cast the VAE to, or None to leave it."""
    if vae_dtype is None or vae is None:
        return None
    if vae_dtype == "auto":
        return torch.bfloat16 if vae.dtype == torch.float16 else None
    if vae_dtype not in _VAE_DTYPES:
        raise ValueError(f"vae_dtype must be 'auto', None or one of {list(_VAE_DTYPES)}, got {vae_dtype!r}.")
    fp16_without_upcast = vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    return None if vae_dtype == vae.dtype and not fp16_without_upcast else vae_dtype
