"""IP-Adapter weights in their original layout (h94/IP-Adapter files: `image_proj.*` and `ip_adapter.*` keys) ->
our IP-Adapter layers, as diffusers 0.42.1's `UNet2DConditionLoadersMixin._convert_ip_adapter_*` reads them.

The kind of adapter is told from the image-projection keys (as diffusers does):
  "proj.weight"                          IP-Adapter            ImageProjection, 4 tokens
  "proj.3.weight"                        IP-Adapter Full Face  IPAdapterFullImageProjection, 257 tokens
  "perceiver_resampler.proj_in.weight"   FaceID Plus           IPAdapterFaceIDPlusImageProjection, 4 tokens
  "norm.weight"                          FaceID                IPAdapterFaceIDImageProjection
  otherwise ("latents")                  IP-Adapter Plus       IPAdapterPlusImageProjection (a resampler)
The cross-attention weights `ip_adapter.{id}.to_k_ip.weight` / `.to_v_ip.weight` are numbered over diffusers'
`unet.attn_processors` order, counting every attention layer: cross-attention layers have the odd ids 1, 3, 5, ...
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdxl.models.attention_processor import AttnProcessor2_0
from sdxl.models.ip_adapter import (
    ImageProjection,
    IPAdapterAttnProcessor2_0,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
)

StateDict = dict[str, torch.Tensor]

HEAD_DIM = 64  # the resamplers' head size (diffusers reads the head count as to_q rows // 64)

# original resampler layer keys -> ours; "(0|attn)" also accepts diffusers-style names that tests write
_RESAMPLER_RULES = [
    (re.compile(r"^layers\.(\d+)\.0\.norm1\."), r"layers.\1.ln0."),
    (re.compile(r"^layers\.(\d+)\.0\.norm2\."), r"layers.\1.ln1."),
    (re.compile(r"^layers\.(\d+)\.(?:0|attn)\.to_q\."), r"layers.\1.attn.to_q."),
    (re.compile(r"^layers\.(\d+)\.(?:0|attn)\.to_out(?:\.0)?\."), r"layers.\1.attn.to_out.0."),
    (re.compile(r"^layers\.(\d+)\.(?:0|attn)\.to_kv\."), r"layers.\1.attn.to_kv."),
    (re.compile(r"^layers\.(\d+)\.1\.0\."), r"layers.\1.ff.0."),
    (re.compile(r"^layers\.(\d+)\.1\.1\."), r"layers.\1.ff.1.net.0.proj."),
    (re.compile(r"^layers\.(\d+)\.1\.3\."), r"layers.\1.ff.1.net.2."),
]


def _rename(sd: StateDict, rules: list[tuple[re.Pattern, str]]) -> StateDict:
    out: StateDict = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            if pattern.search(key):
                key = pattern.sub(repl, key)
                break
        if ".to_kv." in key:  # one (2 * inner, dim) matrix -> to_k, to_v
            k, v = value.chunk(2, dim=0)
            out[key.replace(".to_kv.", ".to_k.")] = k
            out[key.replace(".to_kv.", ".to_v.")] = v
        else:
            out[key] = value
    return out


def _depth(sd: StateDict) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"^layers\.(\d+)\.", k))})


def _resampler_heads(sd: StateDict) -> int:
    return sd["layers.0.attn.to_q.weight"].shape[0] // HEAD_DIM


def num_image_tokens(image_proj: StateDict) -> int:
    """How many image tokens an adapter adds to each cross-attention (diffusers' `num_image_text_embeds`)."""
    if "proj.weight" in image_proj:
        return 4
    if "proj.3.weight" in image_proj:
        return 257  # 256 CLIP patch tokens + CLS
    if "perceiver_resampler.proj_in.weight" in image_proj or "norm.weight" in image_proj:
        return 4
    if "latents" not in image_proj:
        raise ValueError(
            f"Unknown IP-Adapter image projection (keys {sorted(image_proj)[:6]}...): expected the IP-Adapter, Plus, "
            "Full Face, FaceID or FaceID Plus layout."
        )
    return image_proj["latents"].shape[1]


def _build(module_factory: Any, sd: StateDict) -> nn.Module:
    with torch.device("meta"):
        layer = module_factory()
    expected = set(layer.state_dict())
    if set(sd) != expected:
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        raise ValueError(
            f"IP-Adapter image projection weights do not match {type(layer).__name__}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}."
        )
    layer.load_state_dict(sd, strict=True, assign=True)
    return layer


def image_projection_from_state_dict(image_proj: StateDict) -> nn.Module:
    """The image projection layer of one adapter, built from the shapes of its original weights."""
    num_image_tokens(image_proj)  # a clear error for an unknown layout
    if "proj.weight" in image_proj:  # IP-Adapter
        w = image_proj["proj.weight"]
        sd = {k.replace("proj", "image_embeds"): v for k, v in image_proj.items()}
        return _build(lambda: ImageProjection(w.shape[-1], w.shape[0] // 4, 4), sd)
    if "proj.3.weight" in image_proj:  # Full Face
        rules = [(re.compile(r"^proj\.0\."), "ff.net.0.proj."), (re.compile(r"^proj\.2\."), "ff.net.2."),
                 (re.compile(r"^proj\.3\."), "norm.")]  # fmt: skip
        dims = image_proj["proj.0.weight"].shape[0], image_proj["proj.3.weight"].shape[0]
        return _build(lambda: IPAdapterFullImageProjection(*dims), _rename(image_proj, rules))
    if "perceiver_resampler.proj_in.weight" in image_proj:  # FaceID Plus
        inner = {k.removeprefix("perceiver_resampler."): v for k, v in image_proj.items()}
        rules = [(re.compile(r"^proj\.0\."), "proj.net.0.proj."), (re.compile(r"^proj\.2\."), "proj.net.2."),
                 *_RESAMPLER_RULES]  # fmt: skip
        sd = _rename(inner, rules)
        kwargs = {
            "embed_dims": sd["proj_in.weight"].shape[0],
            "output_dims": sd["proj_out.weight"].shape[0],
            "hidden_dims": sd["proj_in.weight"].shape[1],
            "id_embeddings_dim": sd["proj.net.0.proj.weight"].shape[1],
            "heads": _resampler_heads(sd),
            "depth": _depth(sd),
        }
        return _build(lambda: IPAdapterFaceIDPlusImageProjection(**kwargs), sd)
    if "norm.weight" in image_proj:  # FaceID
        w0, w2 = image_proj["proj.0.weight"], image_proj["proj.2.weight"]
        dim = image_proj["norm.weight"].shape[0]
        rules = [(re.compile(r"^proj\.0\."), "ff.net.0.proj."), (re.compile(r"^proj\.2\."), "ff.net.2.")]
        return _build(
            lambda: IPAdapterFaceIDImageProjection(w0.shape[1], dim, w0.shape[0] // w0.shape[1], w2.shape[0] // dim),
            _rename(image_proj, rules),
        )
    sd = _rename(image_proj, _RESAMPLER_RULES)  # Plus
    kwargs = {
        "embed_dims": sd["proj_in.weight"].shape[1],
        "output_dims": sd["proj_out.weight"].shape[0],
        "hidden_dims": sd["latents"].shape[2],
        "heads": _resampler_heads(sd),
        "num_queries": sd["latents"].shape[1],
        "depth": _depth(sd),
    }
    return _build(lambda: IPAdapterPlusImageProjection(**kwargs), sd)


def ip_attention_processors(
    unet: Any, state_dicts: list[dict[str, StateDict]], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """{name: processor} for every attention layer of `unet`: IP-Adapter processors with the adapters' to_k_ip /
    to_v_ip weights on cross-attention layers, fresh processors of the current kind on self-attention layers."""
    tokens = [num_image_tokens(sd["image_proj"]) for sd in state_dicts]
    layers = unet._attention_layers()
    processors: dict[str, Any] = {}
    key_id = 1
    for name, layer in layers.items():
        if not layer.is_cross_attention:
            current = layer.processor
            processors[f"{name}.processor"] = AttnProcessor2_0() if isinstance(current, nn.Module) else type(current)()
            continue
        proc = IPAdapterAttnProcessor2_0(layer.to_q.in_features, layer.to_k.in_features, num_tokens=tokens)
        weights = {}
        for i, sd in enumerate(state_dicts):
            for kind in ("to_k_ip", "to_v_ip"):
                key = f"{key_id}.{kind}.weight"
                if key not in sd["ip_adapter"]:
                    raise ValueError(
                        f"IP-Adapter {i} has no {key!r} for {name}: its weights were made for a UNet with a different "
                        "number of attention layers (SD 1.5 vs SDXL?)."
                    )
                weights[f"{kind}.{i}.weight"] = sd["ip_adapter"][key]
        try:
            proc.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f"IP-Adapter weights for {name} do not fit this UNet: {e}") from None
        processors[f"{name}.processor"] = proc.to(device=device, dtype=dtype)
        key_id += 2
    return processors


def read_ip_adapter_file(path: str | os.PathLike) -> dict[str, StateDict]:
    """{"image_proj": ..., "ip_adapter": ...} from an original IP-Adapter .safetensors file (keys split on their
    `image_proj.` / `ip_adapter.` prefixes). Only safetensors are read."""
    from sdxl.loading.weights import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path.name}: sdxl reads IP-Adapter weights from .safetensors files only (pickled .bin files can run "
            "code); the h94/IP-Adapter repository has a .safetensors file for each adapter."
        )
    out: dict[str, StateDict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(path).items():
        prefix, _, rest = key.partition(".")
        if prefix in out:
            out[prefix][rest] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        raise ValueError(f"{path} is not an IP-Adapter file: it has no image_proj.* and ip_adapter.* weights.")
    return out
