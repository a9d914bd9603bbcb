"""The AUTOMATIC1111 `parameters` PNG text chunk: written with every image, readable by existing tools."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl.params import DEFAULT_HIRES_REFINER_PASS, GenerationParams

if TYPE_CHECKING:
    from PIL import Image

PARAMETERS_KEY = "parameters"


def _format_number(value: float) -> str:
    return f"{value:g}"


def format_parameters(params: GenerationParams) -> str:
    """The A1111 text: prompt line(s), `Negative prompt: ...`, then `Key: value, ...` settings."""
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    settings = {
        "Steps": str(params.steps),
        "Sampler": params.sampler,
        "CFG scale": _format_number(params.guidance_scale),
        "Seed": str(params.seed),
        "Size": f"{params.width}x{params.height}",
        "Model": params.model,
    }
    if params.schedule:  # A1111 writes it right after the sampler
        settings = _insert_after(settings, "Sampler", "Schedule type", params.schedule)
    settings.update(_variation_settings(params))
    if params.denoising_strength is not None:
        settings["Denoising strength"] = _format_number(params.denoising_strength)
    settings.update(_hires_settings(params))
    if params.mask_blur is not None:
        settings["Mask blur"] = str(params.mask_blur)
    if params.padding_mask_crop is not None:  # A1111's "only masked" inpainting
        settings["Masked area padding"] = str(params.padding_mask_crop)
    if params.refiner:
        if params.hires_scale is not None and params.hires_refiner_pass != DEFAULT_HIRES_REFINER_PASS:
            # A1111 writes it (before the refiner's keys) only when not the default, "second pass"
            settings["Hires refiner"] = params.hires_refiner_pass
        settings["Refiner"] = _quote(params.refiner)
        settings["Refiner switch at"] = _format_number(params.refiner_switch_at)
    if params.prompt_2:
        settings["Prompt 2"] = _quote(params.prompt_2)
    if params.lora_hashes:  # as A1111 writes it: Lora hashes: "name: hash, name2: hash2"
        settings["Lora hashes"] = '"' + ", ".join(f"{name}: {h}" for name, h in params.lora_hashes) + '"'
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items() if value != ""))
    return "\n".join(lines)


def _insert_after(settings: dict[str, str], after: str, key: str, value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in settings.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


def _variation_settings(params: GenerationParams) -> dict[str, str]:
    """A1111's "Variation seed" and "Variation seed strength" (only when the strength is not 0)."""
    if not params.subseed_strength:
        return {}
    return {"Variation seed": str(params.subseed), "Variation seed strength": _format_number(params.subseed_strength)}


def _hires_settings(params: GenerationParams) -> dict[str, str]:
    """A1111's hires-fix keys: "Hires upscale", "Hires steps" (only when set), "Hires upscaler"."""
    if params.hires_scale is None:
        return {}
    out = {"Hires upscale": _format_number(params.hires_scale)}
    if params.hires_steps:
        out["Hires steps"] = str(params.hires_steps)
    out["Hires upscaler"] = params.hires_upscaler
    return out


def _quote(text: str) -> str:
    """A1111 quotes a setting value that contains a comma or colon (json-style)."""
    if any(c in text for c in ",:\n\""):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


_SETTING = re.compile(r'\s*([\w ][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, str]:
    """Parse an A1111 `parameters` text into {"Prompt": ..., "Negative prompt": ..., "Steps": ..., ...}."""
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1] if len(lines) > 1 or "Steps:" in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _SETTING.findall(settings_line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        result[key.strip()] = value
    return result


def save_png(image: Image.Image, path: str | Path, params: GenerationParams) -> None:
    """Save `image` as PNG with the A1111 `parameters` chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(params))
    image.save(path, format="PNG", pnginfo=info)


def read_parameters(path: str | Path) -> dict[str, str]:
    """Read and parse the `parameters` chunk of a PNG (empty dict when there is none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(PARAMETERS_KEY)
    return parse_parameters(text) if text else {}


def parse_lora_hashes(value: str) -> list[tuple[str, str]]:
    """A parsed `Lora hashes` value ("name: hash, name2: hash2") -> [(name, hash), ...]."""
    pairs = []
    for item in value.split(","):
        name, _, short = item.strip().rpartition(":")
        if name:
            pairs.append((name.strip(), short.strip()))
    return pairs
