"""`from_pretrained("demo")` / `--model demo` resolve to the demo model shipped in the package."""

from __future__ import annotations

import pytest

from sdxl.loading import hub


@pytest.fixture()
def demo_root(tmp_path, monkeypatch):
    for name in ("base", "refiner"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    monkeypatch.setattr(hub, "DEMO_ROOT", tmp_path)
    return tmp_path


def test_demo_aliases_resolve_to_the_shipped_folders(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "base")  # no folder named "demo" here
    assert hub.resolve_pretrained("demo") == demo_root / "base"
    assert hub.resolve_pretrained("demo-refiner", subfolders=["unet"]) == demo_root / "refiner"


def test_a_local_folder_named_demo_wins(demo_root, tmp_path, monkeypatch):
    (tmp_path / "cwd" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert hub.resolve_pretrained("demo").resolve() == (tmp_path / "cwd" / "demo").resolve()


def test_missing_demo_weights_say_how_to_train_them(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "DEMO_ROOT", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sdxl\.demo\.train --out DIR.*DIR/refiner"):
        hub.resolve_pretrained("demo-refiner")


def test_the_shipped_location_is_package_data():
    assert hub.DEMO_ROOT.parts[-3:] == ("sdxl", "data", "demo")
