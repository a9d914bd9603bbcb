"""The GPU benchmark script of the fast path runs end to end (tiny config, CPU, eager compile backend): a device
session then only has to run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fast


def test_every_part_runs_and_reports(tmp_path):
    out = tmp_path / "fast.json"
    result = bench_fast.main([
        "--config", "tiny", "--device", "cpu", "--size", "64", "--steps", "1", "--batch", "2", "--repeats", "1",
        "--dtype", "float32", "--compile-backend", "eager", "--out", str(out),
    ])
    assert json.loads(out.read_text()) == result
    assert set(result["variants"]) == {
        "diffusers", "diffusers+compile", "diffusers+compile batch", "ours", "ours+optimize", "ours+optimize batch",
        "ours+optimize+compile", "ours bf16+optimize", "ours fp8+optimize",
    }
    assert result["variants"]["ours+optimize batch"]["batch"] == 2
    # fp32 on a CPU: the fast path stays within the parity bound of diffusers' images
    assert result["pixel_diff"]["ours+optimize_vs_diffusers"]["max"] <= 2.5 / 255
    assert "diffusers+compile / best ours" in result["ratios"]


def test_unknown_part_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench_fast.parse_args(["--parts", "single,speed"])
    assert "unknown --parts ['speed']" in capsys.readouterr().err
