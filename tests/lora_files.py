"""LoRA files for the tests, built from a tiny model's own layers (nothing is committed).

`kohya_lora` writes kohya/A1111 keys (sgm UNet names, as sd-scripts trains SDXL; transformers text-encoder names),
`peft_lora` diffusers/PEFT keys, `lycoris` LoHa/LoKr keys. Values are seeded random tensors, large enough that
every adapter visibly changes the image.
"""

from __future__ import annotations

import torch
from torch import nn

from sdxl.loading import keymaps

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                "conv1", "conv2", "time_emb_proj", "conv_shortcut")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def targets(model: nn.Module, suffixes: tuple[str, ...]) -> dict[str, nn.Module]:
    """{path: layer} of the Linear/Conv2d layers whose path ends with one of `suffixes`."""
    return {
        n: m for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and n.endswith(suffixes)
    }


def low_rank(layer: nn.Module, rank: int, generator: torch.Generator, size: float = 0.3):
    """(down, up) for `layer`: conv layers get a conv down (rank, in, kh, kw) and a 1x1 up, as kohya's LoCon."""
    if isinstance(layer, nn.Conv2d):
        down = torch.randn(rank, layer.in_channels, *layer.kernel_size, generator=generator)
        up = torch.randn(layer.out_channels, rank, 1, 1, generator=generator)
    else:
        down = torch.randn(rank, layer.in_features, generator=generator)
        up = torch.randn(layer.out_features, rank, generator=generator)
    return down * size / down[0].numel() ** 0.5, up * size / rank**0.5


def sgm_names(unet: nn.Module) -> dict[str, str]:
    """{diffusers module path: sgm module path} of a UNet, from the single-file key tables."""
    paths = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    table = keymaps.expand_table([f"{p}.weight" for p in paths], keymaps.unet_prefix_rules(unet.config), "")
    return {k.removesuffix(".weight"): r.original.removesuffix(".weight") for k, r in table.items()}


def kohya_lora(unet, text_encoders: dict[str, nn.Module], rank: int = 4, alpha: float = 2.0, seed: int = 0,
               sgm: bool = True) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA over the UNet targets (sgm names unless `sgm=False`) and each given text encoder
    ({"lora_te1": te1, "lora_te2": te2}); every module has `alpha`."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    names = sgm_names(unet) if sgm else None
    for path, layer in targets(unet, UNET_TARGETS).items():
        name = "lora_unet_" + (names[path] if names else path).replace(".", "_")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = low_rank(layer, rank, g)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    for prefix, model in text_encoders.items():
        for path, layer in targets(model, TEXT_TARGETS).items():
            if not path.startswith("text_model."):
                path = "text_model." + path
            name = f"{prefix}_" + path.replace(".", "_")
            sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = low_rank(layer, rank, g)
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def peft_lora(models: dict[str, nn.Module], rank: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT-format LoRA ({component}.{path}.lora_A/lora_B.weight) over the attention and MLP layers
    of each model in `models` ({"unet": ..., "text_encoder": ...}), with the module paths of those very models."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for component, model in models.items():
        suffixes = UNET_TARGETS[:6] if component == "unet" else TEXT_TARGETS
        for path, layer in targets(model, suffixes).items():
            down, up = low_rank(layer, rank, g)
            sd[f"{component}.{path}.lora_A.weight"], sd[f"{component}.{path}.lora_B.weight"] = down, up
    return sd


def lycoris(unet, kind: str, seed: int = 2, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa (`kind="loha"`) or LoKr (`"lokr"`) over the UNet's attention projections (kohya names)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    names = sgm_names(unet)
    for path, layer in targets(unet, ("to_q", "to_k", "to_v", "to_out.0", "conv1")).items():
        name = "lora_unet_" + names[path].replace(".", "_")
        out_f, in_f = layer.weight.shape[0], layer.weight[0].numel()
        if kind == "loha":
            for w in ("w1", "w2"):
                sd[f"{name}.hada_{w}_a"] = torch.randn(out_f, 2, generator=g) * 0.3
                sd[f"{name}.hada_{w}_b"] = torch.randn(2, in_f, generator=g) * 0.3 / in_f**0.25
        else:
            sd[f"{name}.lokr_w1"] = torch.randn(2, 2, generator=g) * 0.5
            sd[f"{name}.lokr_w2_a"] = torch.randn(out_f // 2, 2, generator=g) * 0.3
            sd[f"{name}.lokr_w2_b"] = torch.randn(2, in_f // 2, generator=g) * 0.3 / in_f**0.25
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd
