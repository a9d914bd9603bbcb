"""Random IP-Adapter weights in the original h94/IP-Adapter layout ({"image_proj": ..., "ip_adapter": ...}), for a
given UNet (test-only).

The image projection is a randomly initialised diffusers module whose keys are written back in the original
spelling (the inverse of diffusers' `_convert_ip_adapter_image_proj_to_diffusers`), so that diffusers' own loader
accepting the dict checks that the layout is the original one. `to_k_ip` / `to_v_ip` are numbered over the
attention layers in `attn_processors` order (cross-attention layers get the odd ids 1, 3, 5, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

KINDS = ("base", "plus", "full_face", "faceid", "faceid_plus")
CLIP_DIM = 32  # the image encoder's projection / hidden width the adapters read
ID_DIM = 16  # FaceID embedding width


def _resampler_to_original(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        m = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if m is None:
            out[prefix + key] = value
            continue
        i, rest = m.groups()
        if rest.startswith("attn.to_k."):
            continue  # joined with to_v below
        if rest.startswith("attn.to_v."):
            k = sd[f"layers.{i}.attn.to_k.{rest.split('.')[-1]}"]
            out[f"{prefix}layers.{i}.0.to_kv.{rest.split('.')[-1]}"] = torch.cat([k, value])
            continue
        for ours, original in (
            ("ln0.", "0.norm1."),
            ("ln1.", "0.norm2."),
            ("attn.to_q.", "0.to_q."),
            ("attn.to_out.0.", "0.to_out."),
            ("ff.0.", "1.0."),
            ("ff.1.net.0.proj.", "1.1."),
            ("ff.1.net.2.", "1.3."),
        ):
            if rest.startswith(ours):
                rest = original + rest[len(ours) :]
                break
        out[f"{prefix}layers.{i}.{rest}"] = value
    return out


def image_projection(kind: str, cross_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random image projection of `kind`, keys in the original layout."""
    from diffusers.models import embeddings as e

    torch.manual_seed(seed)
    if kind == "base":
        sd = e.ImageProjection(
            image_embed_dim=CLIP_DIM, cross_attention_dim=cross_dim, num_image_text_embeds=4
        ).state_dict()
        return {k.replace("image_embeds", "proj"): v for k, v in sd.items()}
    if kind == "full_face":
        sd = e.IPAdapterFullImageProjection(image_embed_dim=CLIP_DIM, cross_attention_dim=cross_dim).state_dict()
        names = {"ff.net.0.proj": "proj.0", "ff.net.2": "proj.2", "norm": "proj.3"}
        return {names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in sd.items()}
    if kind == "faceid":
        sd = e.IPAdapterFaceIDImageProjection(
            image_embed_dim=ID_DIM, cross_attention_dim=cross_dim, mult=2, num_tokens=4
        ).state_dict()
        return {k.replace("ff.net.0.proj", "proj.0").replace("ff.net.2", "proj.2"): v for k, v in sd.items()}
    if kind == "plus":
        module = e.IPAdapterPlusImageProjection(
            embed_dims=CLIP_DIM, output_dims=cross_dim, hidden_dims=64, depth=4, dim_head=64, heads=1, num_queries=4
        )
        return _resampler_to_original(module.state_dict())
    if kind == "faceid_plus":
        module = e.IPAdapterFaceIDPlusImageProjection(
            embed_dims=64,
            output_dims=cross_dim,
            hidden_dims=CLIP_DIM,
            id_embeddings_dim=ID_DIM,
            depth=4,
            dim_head=64,
            heads=1,
        )
        sd = module.state_dict()
        head = {
            k.replace("proj.net.0.proj", "proj.0").replace("proj.net.2", "proj.2"): v
            for k, v in sd.items()
            if k.startswith(("proj.", "norm."))
        }
        rest = {k: v for k, v in sd.items() if not k.startswith(("proj.", "norm."))}
        return {**head, **_resampler_to_original(rest, prefix="perceiver_resampler.")}
    raise ValueError(kind)


def ip_adapter_state_dict(unet, kind: str = "base", seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": ..., "ip_adapter": ...} for `unet` (ours or diffusers': same layer order)."""
    generator = torch.Generator().manual_seed(seed + 1)
    cross_dim = unet.config.cross_attention_dim
    attn = {}
    for key_id, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            layer = unet.get_submodule(name.removesuffix(".processor"))
            hidden = layer.to_q.in_features
            for which in ("to_k_ip", "to_v_ip"):
                attn[f"{key_id}.{which}.weight"] = torch.randn(hidden, cross_dim, generator=generator) * 0.3
    return {"image_proj": image_projection(kind, cross_dim, seed), "ip_adapter": attn}


def image_embeds(kind: str, batch: int, seed: int = 0) -> torch.Tensor:
    """What the projection of `kind` reads, one image per row: (B, 1, D) embeddings or (B, 1, L, D) hidden states."""
    g = torch.Generator().manual_seed(seed)
    if kind == "base":
        return torch.randn(batch, 1, CLIP_DIM, generator=g)
    if kind in ("faceid", "faceid_plus"):
        return torch.randn(batch, 1, ID_DIM, generator=g)
    return torch.randn(batch, 1, 5, CLIP_DIM, generator=g)  # Plus, Full Face: 5 hidden-state tokens


def write_file(state_dict: dict[str, dict[str, torch.Tensor]], path: Path) -> Path:
    """The original single-file layout: `image_proj.*` and `ip_adapter.*` keys in one .safetensors file."""
    from safetensors.torch import save_file

    flat = {f"{part}.{k}": v.contiguous() for part, sd in state_dict.items() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path))
    return path
