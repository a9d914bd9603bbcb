"""Model names resolve inside --models-dir only: no paths, URLs, `..` or symlinks out of the folder."""

from __future__ import annotations

import os

import pytest
from server_helpers import wait_for_job

from sdxl.server.catalog import ModelCatalog, ModelNotFound, UnsafeModelName


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder: a diffusers folder, a single file, a stray file, and symlinks in and out of it."""
    from sdxl import DiffusionPipeline
    from sdxl.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("catalog")
    folder = root / "models"
    folder.mkdir()
    write_tiny_checkpoint(folder / "tiny-sdxl", seed=0)
    DiffusionPipeline.from_pretrained(folder / "tiny-sdxl").save_single_file(folder / "tiny-file.safetensors")
    (folder / "notes.txt").write_text("not a model")
    outside = root / "outside"
    write_tiny_checkpoint(outside, seed=1)
    os.symlink(outside, folder / "escape")
    os.symlink(root / "secret.safetensors", folder / "escape.safetensors")
    (root / "secret.safetensors").write_bytes(b"\0" * 16)
    os.symlink(folder / "tiny-sdxl", folder / "alias-inside")
    return folder


def test_the_catalog_lists_what_is_inside(models):
    entries = {e.name: e for e in ModelCatalog("demo", models).entries()}
    assert list(entries)[:2] == ["demo", "demo-refiner"]
    assert entries["tiny-sdxl"].kind == "folder" and entries["tiny-file.safetensors"].kind == "file"
    assert entries["alias-inside"].source == str((models / "tiny-sdxl").resolve())
    assert "notes.txt" not in entries and "escape" not in entries and "escape.safetensors" not in entries


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", str("/tmp"), "https://huggingface.co/x/y",
                                  "tiny-sdxl/../../outside", "..", ".hidden", "~root", "a\\b", "C:model", "x\x00y",
                                  ""])
def test_paths_and_urls_are_refused(models, name):
    with pytest.raises(UnsafeModelName):
        ModelCatalog("demo", models).resolve(name)


@pytest.mark.parametrize("name", ["escape", "escape.safetensors", "notes.txt", "missing"])
def test_symlinks_out_and_other_files_are_unknown(models, name):
    with pytest.raises(ModelNotFound, match="the server can load"):
        ModelCatalog("demo", models).resolve(name)


def test_titles_and_file_names_without_suffix_resolve(models):
    catalog = ModelCatalog("demo", models)
    assert catalog.resolve("tiny-file").name == "tiny-file.safetensors"
    assert catalog.resolve("tiny-sdxl [abc123]").name == "tiny-sdxl"


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-file.safetensors"])  # the file carries its configs
def test_jobs_run_on_a_folder_and_a_single_file_by_name(start_server, models, model):
    server = start_server(models_dir=models)
    with server.client() as client:
        names = [m["name"] for m in client.get("/v1/capabilities").json()["models"]]
        assert "tiny-sdxl" in names and "escape" not in names
        job = client.post("/v1/jobs", json={"prompt": "x", "model": model, "steps": 2, "width": 64, "height": 64,
                                            "seed": 1}).json()
        done = wait_for_job(client, job["id"])
        assert done["state"] == "done", done["error"]
        assert f"Model: {model}" in done["images"][0]["infotext"]
        refused = client.post("/v1/jobs", json={"prompt": "x", "model": "escape"})
        assert refused.status_code == 422
