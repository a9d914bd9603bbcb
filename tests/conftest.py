"""Session-scoped tiny checkpoints, built once with the reference libraries (diffusers/transformers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import reference  # noqa: E402  (tests/reference.py: builders for tiny reference checkpoints)

# Tiny models are dominated by per-op overhead: one thread is several times faster than two on a loaded
# 2-core machine (measured 0.17 s vs 1.07 s for a 2-step tiny pipeline call).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny SDXL base saved by diffusers' save_pretrained (fp32)."""
    folder = tmp_path_factory.mktemp("tiny_base")
    return folder, reference.make_base_pipeline(folder)


@pytest.fixture(scope="session")
def tiny_refiner(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny SDXL refiner (no text_encoder/tokenizer, aesthetic-score ids)."""
    folder = tmp_path_factory.mktemp("tiny_refiner")
    return folder, reference.make_refiner_pipeline(folder)


@pytest.fixture(scope="session")
def clip_vocab_dir(tmp_path_factory) -> Path:
    """vocab.json + merges.txt (official hub layout) written from the shipped vocabulary."""
    return reference.write_clip_vocab(tmp_path_factory.mktemp("clip_vocab"))
