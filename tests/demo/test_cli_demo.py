"""`sdxl train-demo` / `sdxl eval-demo` hand their whole command line to the demo modules' own parsers."""

from __future__ import annotations

import pytest

from sdxl.cli import main


@pytest.mark.parametrize("command, usage", [("train-demo", "sdxl.demo.train"), ("eval-demo", "sdxl.demo.evaluate")])
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
