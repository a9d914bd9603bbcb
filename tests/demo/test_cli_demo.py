"""`sdxl train-demo` / `sdxl eval-demo` hand their whole command line to the demo modules' own parsers."""

from __future__ import annotations

import pytest

from sdxl.cli import main


@pytest.mark.parametrize(
    "command, usage",
    [("train-demo", "sdxl.demo.train"), ("eval-demo", "sdxl.demo.evaluate"), ("demo-grid", "sdxl demo-grid")],
)
def test_demo_commands_forward_to_their_modules(command, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert usage in capsys.readouterr().out


def test_train_demo_without_out_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-demo"])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_grid_prompts_cover_every_shape_and_colour_on_another_background():
    from sdxl.demo.grid import grid_prompts
    from sdxl.demo.shapes import COLOURS, SHAPES

    rows = grid_prompts()
    assert len(rows) == len(SHAPES) and all(len(row) == len(COLOURS) for row in rows)
    for shape, row in zip(SHAPES, rows):
        for colour, prompt in zip(COLOURS, row):
            words = prompt.split()
            assert words[1:3] == [colour, shape] and words[-2] != colour, prompt


def test_demo_grid_writes_a_labelled_png(tmp_path, capsys):
    from PIL import Image

    from sdxl.demo.configs import IMAGE_SIZE
    from sdxl.demo.grid import LABEL

    out = tmp_path / "docs" / "grid.png"
    assert main(["demo-grid", "--out", str(out), "--steps", "2"]) == 0
    assert Image.open(out).size == (6 * LABEL + 8 * IMAGE_SIZE, LABEL + 5 * IMAGE_SIZE)
    assert str(out) in capsys.readouterr().out


def test_demo_grid_needs_a_positive_step_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-grid", "--steps", "0"])
    assert exit_info.value.code == 2
    assert "--steps must be a positive" in capsys.readouterr().err


def test_eval_demo_on_the_alias_prints_and_writes_only_where_asked(tmp_path, monkeypatch, capsys):
    import json

    from sdxl.loading import hub

    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in hub.DEMO_ROOT.rglob("*"))
    assert main(["eval-demo", "--model", "demo", "--n", "3", "--steps", "2"]) == 0
    assert "3 held-out prompts" in capsys.readouterr().out
    assert sorted(p.name for p in hub.DEMO_ROOT.rglob("*")) == before  # the package data is left alone
    assert main(["eval-demo", "--model", "demo", "--n", "3", "--steps", "2", "--json", "e.json"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n"] == 3 and set(result["accuracy"]) == {"colour", "background", "shape", "position"}
