"""AUTOMATIC1111's `<lora:name:weight>` prompt tags: found, checked and removed from the prompt text.

A1111 reads `<lora:NAME>` (weight 1) and `<lora:NAME:WEIGHT>` anywhere in a prompt; the tag selects the LoRA file
named NAME for that generation and is not part of the text the encoders see.
"""

from __future__ import annotations

import re

LORA_TAG = re.compile(r"<lora:([^>]*)>")


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its `<lora:...>` tags, [(name, weight), ...] in order); a malformed tag is a ValueError.

    Removing a tag leaves its surrounding text as it was (A1111 does the same), so `"a cat <lora:x:1>"` encodes
    as `"a cat "`.
    """
    tags: list[tuple[str, float]] = []
    for body in LORA_TAG.findall(prompt):
        parts = body.split(":")
        name = parts[0].strip()
        if not name or len(parts) > 2:
            raise ValueError(
                f"prompt tag <lora:{body}> is not understood: write <lora:NAME> or <lora:NAME:WEIGHT> "
                "(per-encoder weights such as <lora:NAME:0.5:1> are not supported)."
            )
        try:
            weight = float(parts[1]) if len(parts) == 2 else 1.0
        except ValueError:
            raise ValueError(f"prompt tag <lora:{body}>: the weight {parts[1]!r} is not a number.") from None
        tags.append((name, weight))
    return LORA_TAG.sub("", prompt), tags


def merge_lora_choices(*choices: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """One (name, weight) per name, first appearance order; a name given twice keeps its last weight."""
    merged: dict[str, float] = {}
    for group in choices:
        for name, weight in group:
            merged[name] = weight
    return list(merged.items())
