"""LoRA files -> {component: {module path: AdapterWeights}}: the key maps of the formats SDXL LoRAs come in.

- kohya / A1111 (`lora_unet_*`, `lora_te1_*` / `lora_te_*`, `lora_te2_*`; `.lora_down.weight`, `.lora_up.weight`,
  `.alpha`): the UNet names are sgm's (`input_blocks_4_1_...`, as kohya's sd-scripts trains SDXL) or diffusers'
  (`down_blocks_1_...`); the text encoders' are transformers'. Names are looked up in tables built from the models'
  own Linear/Conv2d layers (the sgm ones through `keymaps.unet_prefix_rules`), never guessed by string surgery.
- LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, optional `hada_t1`/`hada_t2`) and LoKr
  (`lokr_w1` or `lokr_w1_a`/`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`/`lokr_w2_b`, optional `lokr_t2`) under the same
  kohya module names.
- diffusers / PEFT (`unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.*`, `text_encoder_2.*`), with the
  rank/alpha from the file's `lora_adapter_metadata` when diffusers wrote one, and the older diffusers spellings
  (`to_q_lora.down`, `.lora.down`, `.lora_linear_layer.down`, `.processor.`).

A key that names no layer of the pipeline, or a part these formats do not have (DoRA `dora_scale`, LoCon's
`lora_mid`, `lora_B.bias`), is a ValueError that names it: nothing is silently skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sdxl.loading import keymaps
from sdxl.models.lora import LOHA, LOKR, LORA, AdapterWeights

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
# kohya/LyCORIS suffix -> (kind, our tensor name)
KOHYA_PARTS = {
    "lora_down.weight": (LORA, "down"), "lora_up.weight": (LORA, "up"),
    "hada_w1_a": (LOHA, "w1_a"), "hada_w1_b": (LOHA, "w1_b"), "hada_w2_a": (LOHA, "w2_a"),
    "hada_w2_b": (LOHA, "w2_b"), "hada_t1": (LOHA, "t1"), "hada_t2": (LOHA, "t2"),
    "lokr_w1": (LOKR, "w1"), "lokr_w1_a": (LOKR, "w1_a"), "lokr_w1_b": (LOKR, "w1_b"), "lokr_w2": (LOKR, "w2"),
    "lokr_w2_a": (LOKR, "w2_a"), "lokr_w2_b": (LOKR, "w2_b"), "lokr_t2": (LOKR, "t2"),
}
REQUIRED = {LORA: ({"down", "up"},), LOHA: ({"w1_a", "w1_b", "w2_a", "w2_b"},),
            LOKR: ({"w1"}, {"w1_a", "w1_b"})}
UNSUPPORTED = {
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "lora_mid.weight": "LoCon with a Tucker middle factor (lora_mid)",
    "lora_magnitude_vector": "DoRA (weight-decomposed LoRA)",
    "lora_B.bias": "a LoRA with bias terms (lora_bias)",
}
# older diffusers spellings -> PEFT's
_OLD_DIFFUSERS = (
    (".processor.", "."), ("to_q_lora.", "to_q.lora."), ("to_k_lora.", "to_k.lora."), ("to_v_lora.", "to_v.lora."),
    ("to_out_lora.", "to_out.0.lora."), (".lora_linear_layer.", ".lora."), (".lora.down.", ".lora_A."),
    (".lora.up.", ".lora_B."),
)
SHOWN = 5

Found = dict[str, dict[str, AdapterWeights]]


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{module path: layer} for every Linear and Conv2d layer of `model`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def kohya_names(component: str, model: nn.Module) -> dict[str, str]:
    """{kohya module name without its `lora_*_` prefix: our module path} for one component."""
    paths = list(adaptable_layers(model))
    names = {p.replace(".", "_"): p for p in paths}
    if component == "unet":
        rules = keymaps.unet_prefix_rules(model.config)
        table = keymaps.expand_table([f"{p}.weight" for p in paths], rules, "")
        for key, rule in table.items():
            names[rule.original.removesuffix(".weight").replace(".", "_")] = key.removesuffix(".weight")
    return names


def _listing(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _unsupported(key: str) -> str | None:
    return next((what for part, what in UNSUPPORTED.items() if key.endswith(part)), None)


def _group_kohya(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """{kohya module name: {"kind", "tensors", "alpha", "keys"}} for the kohya/LyCORIS keys of `sd`."""
    groups: dict[str, dict[str, Any]] = {}
    for key, tensor in sd.items():
        module, _, part = key.partition(".")
        group = groups.setdefault(module, {"kinds": set(), "tensors": {}, "alpha": None, "keys": []})
        group["keys"].append(key)
        if part == "alpha":
            group["alpha"] = float(tensor.float().item())
        elif part in KOHYA_PARTS:
            kind, name = KOHYA_PARTS[part]
            group["kinds"].add(kind)
            group["tensors"][name] = tensor
        else:
            what = _unsupported(key)
            raise ValueError(f"LoRA key {key!r}: {what} is not supported" if what else f"unknown LoRA key {key!r}")
    return groups


def _adapter(module: str, group: dict[str, Any]) -> AdapterWeights:
    kinds = group["kinds"]
    if len(kinds) != 1:
        raise ValueError(f"LoRA module {module!r} has {'no' if not kinds else 'mixed'} adapter tensors "
                         f"({', '.join(group['keys'])}).")
    kind = kinds.pop()
    names = set(group["tensors"])
    if kind == LOKR:
        w1_ok = "w1" in names or {"w1_a", "w1_b"} <= names
        w2_ok = "w2" in names or {"w2_a", "w2_b"} <= names
        complete = w1_ok and w2_ok
    else:
        complete = REQUIRED[kind][0] <= names
    if not complete:
        raise ValueError(f"LoRA module {module!r} is incomplete: it has only {', '.join(group['keys'])}.")
    return AdapterWeights(kind, group["tensors"], group["alpha"])


def parse_kohya(sd: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module]) -> Found:
    """kohya/A1111 and LyCORIS keys -> {component: {module path: AdapterWeights}}."""
    found: Found = {}
    tables: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    for module, group in _group_kohya(sd).items():
        prefix = next((p for p in KOHYA_PREFIXES if module.startswith(p)), None)
        component = KOHYA_PREFIXES.get(prefix) if prefix else None
        model = models.get(component) if component else None
        if model is not None and component not in tables:
            tables[component] = kohya_names(component, model)
        path = tables[component].get(module[len(prefix):]) if model is not None else None
        if path is None:
            unmatched.extend(group["keys"])
            continue
        found.setdefault(component, {})[path] = _adapter(module, group)
    _raise_unmatched(unmatched, models)
    return found


def _raise_unmatched(unmatched: list[str], models: Mapping[str, nn.Module]) -> None:
    if unmatched:
        present = [c for c in COMPONENTS if models.get(c) is not None]
        raise ValueError(
            f"{len(unmatched)} LoRA keys match no layer of this pipeline ({', '.join(present)}): "
            f"{_listing(sorted(unmatched))}. The LoRA was made for another model (SD 1.5, another SDXL variant, a "
            "refiner without text_encoder)."
        )


def _peft_scales(metadata: Mapping[str, str] | None, component: str) -> tuple[float | None, dict[str, float], bool]:
    """(lora_alpha, alpha_pattern, use_rslora) of one component from diffusers' `lora_adapter_metadata`."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return None, {}, False
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"the LoRA file's lora_adapter_metadata is not JSON: {e}") from None
    prefix = f"{component}."
    own = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)} or (
        config if component == "unet" and not any("." in k for k in config) else {}
    )
    return own.get("lora_alpha"), dict(own.get("alpha_pattern") or {}), bool(own.get("use_rslora"))


def _pattern_alpha(path: str, patterns: Mapping[str, float]) -> float | None:
    # peft matches pattern keys as module-name suffixes (`(.*\.)?{key}$`)
    for pattern, alpha in patterns.items():
        if re.match(rf"(.*\.)?({pattern.lstrip('^')})$", path):
            return float(alpha)
    return None


def parse_peft(
    sd: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module], metadata: Mapping[str, str] | None = None
) -> Found:
    """diffusers/PEFT keys (`<component>.<module>.lora_A.weight`, ...) -> {component: {path: AdapterWeights}}."""
    found: Found = {}
    unmatched: list[str] = []
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in sd.items():
        what = _unsupported(key)
        if what:
            raise ValueError(f"LoRA key {key!r}: {what} is not supported")
        new = key
        for old, replacement in _OLD_DIFFUSERS:
            new = new.replace(old, replacement)
        component, _, rest = new.partition(".")
        if component not in COMPONENTS or not rest:
            unmatched.append(key)
            continue
        if rest.endswith(".alpha"):
            pairs.setdefault((component, rest[: -len(".alpha")]), {"keys": []})["alpha"] = float(tensor.item())
            pairs[(component, rest[: -len(".alpha")])]["keys"].append(key)
            continue
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", rest)
        if match is None:
            unmatched.append(key)
            continue
        entry = pairs.setdefault((component, match.group(1)), {"keys": []})
        entry["down" if match.group(2) == "A" else "up"] = tensor
        entry["keys"].append(key)
    for (component, module), entry in pairs.items():
        model = models.get(component)
        layers = adaptable_layers(model) if model is not None else {}
        path = module if module in layers else f"{keymaps.CLIP_PREFIX}{module}"
        if path not in layers:
            unmatched.extend(entry["keys"])
            continue
        if "down" not in entry or "up" not in entry:
            raise ValueError(f"LoRA module {component}.{module} is incomplete: it has only {entry['keys']}.")
        alpha = entry.get("alpha")
        if alpha is None:
            lora_alpha, patterns, rslora = _peft_scales(metadata, component)
            alpha = _pattern_alpha(path, patterns) or _pattern_alpha(module, patterns) or lora_alpha
            if alpha is not None and rslora:  # peft's rsLoRA: alpha / sqrt(r) = (alpha * sqrt(r)) / r
                alpha = alpha * math.sqrt(entry["down"].shape[0])
        found.setdefault(component, {})[path] = AdapterWeights(LORA, {"down": entry["down"], "up": entry["up"]},
                                                               alpha)
    _raise_unmatched(unmatched, models)
    return found


def parse_lora(
    sd: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module], metadata: Mapping[str, str] | None = None
) -> Found:
    """Any supported LoRA state dict -> {component: {module path: AdapterWeights}}; shapes checked by the caller."""
    if not sd:
        raise ValueError("the LoRA file holds no tensors.")
    kohya = [k for k in sd if k.startswith(tuple(KOHYA_PREFIXES))]
    if kohya and len(kohya) != len(sd):
        other = sorted(set(sd) - set(kohya))
        raise ValueError(f"the LoRA mixes kohya keys (lora_unet_*, lora_te*_*) with others: {_listing(other)}.")
    return parse_kohya(sd, models) if kohya else parse_peft(sd, models, metadata)
