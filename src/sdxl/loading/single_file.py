"""Load an SDXL checkpoint saved as one file in the original Stability layout (sd_xl_base_1.0.safetensors, ...).

The file holds every model under a prefix: `model.diffusion_model.` (UNet), `first_stage_model.` (VAE),
`conditioner.embedders.0.transformer.` (CLIP-L) and `conditioner.embedders.1.model.` (OpenCLIP-G); the refiner has
only OpenCLIP-G, as `conditioner.embedders.0.model.`. We detect which model it is from keys and shapes, build the
configs (from the SDXL presets with sizes read from shapes, or from a diffusers folder passed as `config=`), rename
with the tables of keymaps.py and assign the tensors to models built on the meta device.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sdxl.loading import keymaps, registry
from sdxl.loading.diffusers import check_keys
from sdxl.loading.files import read_json
from sdxl.loading.hub import resolve_single_file
from sdxl.loading.keymaps import Rule, StateDict
from sdxl.loading.weights import check_finite, load_checkpoint, read_header, sniff_format

logger = logging.getLogger(__name__)

BASE, REFINER, INPAINT = "base", "refiner", "inpaint"

# The official stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
    "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False, "clip_sample": False,
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
}

# Original keys that carry no weights of ours (buffers, training state): skipped on load.
IGNORED_SUFFIXES = ("embeddings.position_ids", "logit_scale", "attn_mask")
IGNORED_PREFIXES = ("denoiser.", "model_ema.", "loss.", "conditioner.embedders.2.", "conditioner.embedders.3.")
SHOWN = 5
# safetensors metadata key under which save_single_file stores the configs (JSON {component: config})
CONFIGS_KEY = "sdxl_configs"


@dataclass(frozen=True)
class Part:
    """One model inside a single file: its component name, class, key prefix and how its table is generated."""

    name: str
    class_name: str
    prefix: str
    rules: Any  # config -> list[PrefixRule]
    conv1x1: tuple[str, ...] = ()
    fused_qkv: bool = False


UNET = Part("unet", "UNet2DConditionModel", keymaps.UNET_PREFIX, keymaps.unet_prefix_rules)
VAE = Part("vae", "AutoencoderKL", keymaps.VAE_PREFIX, keymaps.vae_prefix_rules, conv1x1=keymaps.VAE_CONV1X1)
CLIP_L = Part("text_encoder", "CLIPTextModel", keymaps.CLIP_L_PREFIX, keymaps.clip_l_prefix_rules)
CLIP_G = Part(
    "text_encoder_2", "CLIPTextModelWithProjection", keymaps.OPEN_CLIP_BASE_PREFIX, keymaps.open_clip_prefix_rules,
    fused_qkv=True,
)
CLIP_G_REFINER = replace(CLIP_G, prefix=keymaps.OPEN_CLIP_REFINER_PREFIX)


def parts_for(kind: str) -> tuple[Part, ...]:
    """The models a single file of `kind` holds, in component order."""
    return (UNET, VAE, CLIP_G_REFINER) if kind == REFINER else (UNET, VAE, CLIP_L, CLIP_G)


def model_class(part: Part) -> type:
    """Our class for one part (imported on first use)."""
    return registry.resolve_component(part.name, "sdxl", part.class_name)[1]


def key_table(part: Part, config: Any) -> dict[str, Rule]:
    """{our key: Rule} for `part` built from `config`, expanded over the keys of a meta-device model."""
    with torch.device("meta"):
        keys = list(model_class(part)(config).state_dict())
    return keymaps.expand_table(keys, part.rules(config), part.prefix, part.conv1x1, part.fused_qkv)


# ---- detection and configs ----------------------------------------------------------------------------------------


def _has_prefix(shapes: dict[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def detect_kind(shapes: dict[str, Any], source: str | os.PathLike = "the checkpoint", hint: str | None = None) -> str:
    """"base", "refiner" or "inpaint" from the keys and shapes of an original-layout file (`shapes`: key -> shape).

    Text encoders decide base vs refiner when present; a UNet-only file is judged by its cross-attention width
    and pooled-embedding input (SDXL: 2048/2816 base, 1280/2560 refiner), else by `hint` (base or refiner, from a
    config folder). 9 input channels mean inpaint.
    """
    conv_in = shapes.get(keymaps.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        found = sorted({k.split(".")[0] for k in shapes})[:SHOWN]
        raise ValueError(
            f"{source} is not an SDXL checkpoint in the original single-file layout: it has no "
            f"'{keymaps.UNET_PREFIX}input_blocks.0.0.weight' (its keys start with {found}). A diffusers folder "
            "loads with from_pretrained; a UNet-only diffusers file with UNet2DConditionModel.from_pretrained."
        )
    if _has_prefix(shapes, keymaps.CLIP_L_PREFIX) or _has_prefix(shapes, keymaps.OPEN_CLIP_BASE_PREFIX):
        kind = BASE
    elif _has_prefix(shapes, keymaps.OPEN_CLIP_REFINER_PREFIX):
        kind = REFINER
    else:
        context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
        pooled = shapes.get(keymaps.UNET_PREFIX + "label_emb.0.0.weight", (None, None))[1]
        if (context, pooled) == (2048, 2816):
            kind = BASE
        elif (context, pooled) == (1280, 2560):
            kind = REFINER
        elif hint is not None:
            kind = hint
        else:
            raise ValueError(
                f"{source} holds a UNet with cross-attention width {context} and pooled input {pooled}, neither "
                "the SDXL base (2048, 2816) nor the refiner (1280, 2560), and no text encoders to tell: pass "
                "config=<a diffusers folder of this model> to say what it is."
            )
    if conv_in[1] == 9:
        if kind == REFINER:
            raise ValueError(f"{source}: a 9-channel (inpainting) UNet with the refiner's text encoder is not SDXL.")
        return INPAINT
    if conv_in[1] != 4:
        raise ValueError(f"{source}: the UNet takes {conv_in[1]} input channels; SDXL has 4 (or 9 for inpainting).")
    return kind


def _unet_config(sd: StateDict, kind: str) -> Any:
    from sdxl.models.unet import UNetConfig

    preset = {BASE: UNetConfig.sdxl_base, REFINER: UNetConfig.sdxl_refiner, INPAINT: UNetConfig.sdxl_inpaint}[kind]()
    p = keymaps.UNET_PREFIX
    context = next((t.shape[1] for k, t in sd.items() if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    return replace(
        preset,
        in_channels=sd[p + "input_blocks.0.0.weight"].shape[1],
        out_channels=sd[p + "out.2.weight"].shape[0],
        cross_attention_dim=context or preset.cross_attention_dim,
        projection_class_embeddings_input_dim=sd[p + "label_emb.0.0.weight"].shape[1],
    )


def _clip_config(sd: StateDict, part: Part) -> Any:
    from sdxl.models.clip import CLIPTextConfig

    p = part.prefix
    if part.fused_qkv:
        tok, pos = sd[p + "token_embedding.weight"], sd[p + "positional_embedding"]
        layers = len({k.split(".")[len(p.split(".")) + 1] for k in sd if k.startswith(p + "transformer.resblocks.")})
        fc1 = sd[p + "transformer.resblocks.0.mlp.c_fc.weight"]
        preset = CLIPTextConfig.clip_g()
        extra = {"projection_dim": sd[p + "text_projection"].shape[1]}
    else:
        q = p + "text_model."
        tok, pos = sd[q + "embeddings.token_embedding.weight"], sd[q + "embeddings.position_embedding.weight"]
        layers = len({k.split(".")[len(q.split(".")) + 1] for k in sd if k.startswith(q + "encoder.layers.")})
        fc1 = sd[q + "encoder.layers.0.mlp.fc1.weight"]
        preset, extra = CLIPTextConfig.clip_l(), {}
    hidden = tok.shape[1]
    return replace(
        preset,
        vocab_size=tok.shape[0],
        hidden_size=hidden,
        max_position_embeddings=pos.shape[0],
        intermediate_size=fc1.shape[0],
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),  # OpenAI/OpenCLIP text towers use 64-wide heads
        **extra,
    )


def configs_from_shapes(sd: StateDict, kind: str, parts: tuple[Part, ...]) -> dict[str, Any]:
    """Configs of the parts present in `sd`: the SDXL presets with the sizes the tensors show."""
    from sdxl.models.vae import VAEConfig

    configs: dict[str, Any] = {}
    for part in parts:
        if part is UNET:
            configs[part.name] = _unet_config(sd, kind)
        elif part is VAE:
            configs[part.name] = VAEConfig.sdxl()
        else:
            configs[part.name] = _clip_config(sd, part)
    return configs


def saved_configs(path: Path) -> dict[str, Any]:
    """The configs save_single_file stored in a safetensors file's metadata ({} for other files)."""
    if sniff_format(path) != "safetensors":
        return {}
    text = read_header(path)[1].get(CONFIGS_KEY)
    if text is None:
        return {}
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {CONFIGS_KEY!r} metadata is not valid JSON ({e})") from None
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise ValueError(f"{path}: the {CONFIGS_KEY!r} metadata must map component names to configs")
    return saved


def configs_from_dicts(saved: dict[str, Any], names: list[str], source: Path) -> dict[str, Any]:
    """Configs of `names` from the config dicts save_single_file stored (a missing one: the file's shapes rule)."""
    configs = {}
    for part in (UNET, VAE, CLIP_L, CLIP_G):
        if part.name not in names:
            continue
        if part.name not in saved:
            raise ValueError(f"{source}: the stored configs have no {part.name!r}; pass config=<a diffusers folder>")
        try:
            configs[part.name] = registry.config_class(model_class(part)).from_dict(saved[part.name])
        except (ValueError, TypeError) as e:
            raise type(e)(f"{source} ({part.name} config): {e}") from e
    return configs


def configs_from_folder(folder: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """Configs of `names` read from the `<name>/config.json` files of a diffusers-layout folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"config={str(folder)!r} is not a folder; pass a local diffusers-layout folder.")
    configs = {}
    for part in (UNET, VAE, CLIP_L, CLIP_G):
        if part.name not in names:
            continue
        path = folder / part.name / "config.json"
        cls = model_class(part)
        try:
            configs[part.name] = registry.config_class(cls).from_dict(read_json(path, f"config of {part.name!r}"))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from e
    return configs


# ---- loading ------------------------------------------------------------------------------------------------------


def _build(part: Part, config: Any, sd: StateDict, source: Path, dtype: torch.dtype) -> torch.nn.Module:
    table = key_table(part, config)
    try:
        ours = keymaps.from_original(sd, table)
    except ValueError as e:
        raise ValueError(
            f"{source}: the {part.name} (keys '{part.prefix}*') does not match the SDXL layout: {e}. If the model "
            "has non-SDXL sizes, pass config=<a diffusers folder of this model>."
        ) from None
    with torch.device("meta"):
        model = model_class(part)(config)
    try:
        check_keys(model, ours, source)
    except ValueError as e:
        raise ValueError(f"{e} ({part.name}; pass config=<a diffusers folder of this model> if its sizes differ)") from None
    ours = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ours.items()}
    model.load_state_dict(ours, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model


def _unexpected(sd: StateDict, used: set[str]) -> list[str]:
    """Keys no table used, less the known non-weight keys (buffers, EMA and training state)."""
    return [k for k in sd if k not in used and not k.endswith(IGNORED_SUFFIXES) and not k.startswith(IGNORED_PREFIXES)]


def load_single_file_components(
    path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    config: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    overrides: dict[str, Any] | None = None,
    check_values: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load every component of an original-layout single file; returns (components, info).

    `overrides` supplies (or with None, skips) components by name, e.g. `vae=` for a UNet-only file; a component
    neither in the file nor supplied is a ValueError naming the argument. `info` holds "kind" and the pipeline
    options ("force_zeros_for_empty_prompt", ...). `check_values` reports NaN/Inf tensors by name.
    """
    overrides = dict(overrides or {})
    dtype = torch.float32 if torch_dtype is None else torch_dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"torch_dtype must be a floating torch.dtype such as torch.float16, got {torch_dtype!r}.")
    path = resolve_single_file(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; from_single_file takes one checkpoint file (use from_pretrained).")
    sd = load_checkpoint(path, allow_pickle=allow_pickle)
    kind = detect_kind({k: tuple(v.shape) for k, v in sd.items()}, path, _kind_hint(config))
    parts = parts_for(kind)
    present = [p for p in parts if p.name not in overrides and _has_prefix(sd, p.prefix)]
    missing = [p for p in parts if p.name not in overrides and p not in present]
    if missing:
        raise ValueError(
            f"{path} holds an SDXL {kind} without {', '.join(p.name for p in missing)} (no '{missing[0].prefix}*' "
            f"keys). Pass the missing models as arguments: {', '.join(f'{p.name}=...' for p in missing)} (or "
            f"{', '.join(f'{p.name}=None' for p in missing)} to leave them out)."
        )
    if check_values:
        check_finite({k: v for k, v in sd.items() if any(k.startswith(p.prefix) for p in present)}, path)
    saved = saved_configs(path) if config is None else {}
    if config is not None:
        configs = configs_from_folder(config, [p.name for p in present])
    elif saved:
        configs = configs_from_dicts(saved, [p.name for p in present], path)
    else:
        configs = configs_from_shapes(sd, kind, tuple(present))

    components: dict[str, Any] = {}
    used: set[str] = set()
    for part in present:
        components[part.name] = _build(part, configs[part.name], sd, path, dtype)
        used |= {r.original for r in key_table(part, configs[part.name]).values()}
    unexpected = _unexpected(sd, used)
    if unexpected:
        more = ", ..." if len(unexpected) > SHOWN else ""
        raise ValueError(
            f"{path} has {len(unexpected)} key(s) that no SDXL {kind} model uses ({', '.join(unexpected[:SHOWN])}"
            f"{more}); it is probably not an SDXL checkpoint, or carries extra networks (LoRA, ControlNet)."
        )
    del sd

    from sdxl.tokenizer import CLIPTokenizer

    if kind != REFINER:
        components["tokenizer"] = CLIPTokenizer.from_shipped_vocab(pad_token="<|endoftext|>")
    else:
        components["text_encoder"] = components["tokenizer"] = None
    components["tokenizer_2"] = CLIPTokenizer.from_shipped_vocab(pad_token="!")
    components["scheduler"] = _scheduler(config, saved.get("scheduler"))
    components.update(overrides)

    options: dict[str, Any] = {"force_zeros_for_empty_prompt": kind != REFINER}
    if kind == REFINER:
        options["requires_aesthetics_score"] = True
    if config is not None and (Path(config) / "model_index.json").is_file():
        index = read_json(Path(config) / "model_index.json", "pipeline index")
        options.update({k: v for k, v in index.items() if k in options})
    logger.info("Loaded an SDXL %s from %s (%s)", kind, path, dtype)
    return components, {"kind": kind, "options": options}


def _kind_hint(config: str | os.PathLike | None) -> str | None:
    """base or refiner, as a diffusers folder's model_index.json says (the refiner has no text_encoder)."""
    if config is None or not (Path(config) / "model_index.json").is_file():
        return None
    index = read_json(Path(config) / "model_index.json", "pipeline index")
    entry = index.get("text_encoder")
    return REFINER if not entry or entry[-1] is None else BASE


def _scheduler(config: str | os.PathLike | None, saved: dict[str, Any] | None = None) -> Any:
    scheduler_config: dict[str, Any] = dict(saved or SDXL_SCHEDULER_CONFIG)
    if config is not None and (Path(config) / "scheduler" / "scheduler_config.json").is_file():
        scheduler_config = json.loads((Path(config) / "scheduler" / "scheduler_config.json").read_text())
    name = scheduler_config.get("_class_name", "EulerDiscreteScheduler")
    _, cls = registry.resolve_component("scheduler", "diffusers", name)
    return cls.from_config(scheduler_config)
