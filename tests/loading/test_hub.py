"""Hub ids through a hand-made huggingface_hub cache (HF_HUB_CACHE + HF_HUB_OFFLINE=1); nothing touches the network."""

from __future__ import annotations

import fnmatch
import json

import pytest
import torch
from safetensors.torch import save_file

from sdxl.loading.hub import allow_patterns, looks_like_hub_id, resolve_pretrained

REV = "0123456789abcdef0123456789abcdef01234567"

# The files of stabilityai/stable-diffusion-xl-base-1.0 that matter here (plus the single files at the root).
SDXL_REPO = [
    "model_index.json",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_offset_example-lora_1.0.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.onnx",
    "text_encoder/openvino_model.bin",
    "text_encoder/flax_model.msgpack",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "text_encoder_2/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
]


def _selected(patterns):
    return sorted(f for f in SDXL_REPO if any(fnmatch.fnmatch(f, p) for p in patterns))


def test_patterns_fetch_only_the_requested_variant_and_never_pickles():
    comps = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "unet", "vae"]
    assert _selected(allow_patterns(comps, "fp16")) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    plain = _selected(allow_patterns(["unet"], None))
    assert plain == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert _selected(allow_patterns([], None)) == ["model_index.json"]


def test_sharded_patterns():
    files = [
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    got = [f for f in files if any(fnmatch.fnmatch(f, p) for p in allow_patterns(["unet"], "fp16"))]
    assert got == [files[0], files[2]]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", True),
        ("madebyollin/sdxl-vae-fp16-fix", True),
        ("org/name", True),
        ("name", False),
        ("a/b/c", False),
        ("./org/name", False),
        ("/abs/path", False),
        ("org/na--me", False),
        ("org/name.git", False),
    ],
)
def test_hub_id_shapes(value, expected):
    assert looks_like_hub_id(value) is expected


def test_path_object_is_never_a_hub_id():
    from pathlib import Path

    assert not looks_like_hub_id(Path("org/name"))


def test_local_folder_is_used_as_is(tmp_path):
    assert resolve_pretrained(tmp_path) == tmp_path
    assert resolve_pretrained(str(tmp_path), subfolders=["unet"], variant="fp16") == tmp_path


def test_missing_local_folder_is_named(tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        resolve_pretrained(missing)


def test_a_file_is_not_a_folder(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        resolve_pretrained(f)


# ---- fake cache ---------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def make_cached_repo(cache, repo_id: str, files: dict[str, bytes]):
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...} (blobs skipped)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    for name, content in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(content)
    return snap


def _weights(tmp_path) -> bytes:
    save_file({"w": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    return (tmp_path / "w.safetensors").read_bytes()


def test_cached_hub_id_resolves_offline(hub_cache, tmp_path):
    w = _weights(tmp_path)
    snap = make_cached_repo(
        hub_cache,
        "org/pipe",
        {
            "model_index.json": b"{}",
            "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.fp16.safetensors": w,
            "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": w,  # no fp16 here: the plain file is the fallback
        },
    )
    assert resolve_pretrained("org/pipe", subfolders=[]) == snap
    assert resolve_pretrained("org/pipe", subfolders=["unet", "vae"], variant="fp16") == snap
    with pytest.raises(FileNotFoundError, match="lacks the weights in vae/"):
        resolve_pretrained("org/pipe", subfolders=["vae"], variant="fp16", variant_fallback=False)


def test_cached_root_model_resolves(hub_cache, tmp_path):
    snap = make_cached_repo(
        hub_cache,
        "madebyollin/sdxl-vae-fp16-fix",
        {"config.json": b"{}", "diffusion_pytorch_model.safetensors": _weights(tmp_path)},
    )
    assert resolve_pretrained("madebyollin/sdxl-vae-fp16-fix") == snap


def test_offline_and_not_cached_says_how_to_download(hub_cache):
    with pytest.raises(FileNotFoundError) as e:
        resolve_pretrained("stabilityai/stable-diffusion-xl-base-1.0", subfolders=["unet"], variant="fp16")
    msg = str(e.value)
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include" in msg
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in msg
    assert "HF_HUB_OFFLINE" in msg and "local folder" in msg
    assert str(hub_cache) in msg


def test_partially_cached_snapshot_says_what_is_missing(hub_cache):
    make_cached_repo(hub_cache, "org/pipe", {"model_index.json": b"{}", "unet/config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match=r"(?s)lacks the weights in unet/.*hf download org/pipe"):
        resolve_pretrained("org/pipe", subfolders=["unet"])
    with pytest.raises(FileNotFoundError, match=r"lacks vae/"):
        resolve_pretrained("org/pipe", subfolders=["vae"])


def test_cached_model_index_only(hub_cache):
    snap = make_cached_repo(hub_cache, "org/pipe", {"model_index.json": json.dumps({"a": 1}).encode()})
    assert resolve_pretrained("org/pipe", subfolders=[]) == snap
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        resolve_pretrained("org/pipe")


# ---- online path, with snapshot_download replaced by a fake Hub -----------------------------------------------------


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download: copies the matching 'remote' files into a snapshot."""

    def __init__(self, root, files: dict[str, bytes], error: Exception | None = None):
        self.root, self.files, self.error, self.calls = root, files, error, []

    def __call__(self, repo_id, *, allow_patterns, local_files_only, cache_dir, revision):
        self.calls.append({"allow_patterns": list(allow_patterns), "local_files_only": local_files_only})
        if self.error is not None:
            raise self.error
        snap = self.root / repo_id.replace("/", "--")
        for name, content in self.files.items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snap / name).parent.mkdir(parents=True, exist_ok=True)
                (snap / name).write_bytes(content)
        snap.mkdir(parents=True, exist_ok=True)
        return str(snap)


@pytest.fixture
def online(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def install(files, error=None):
        fake = FakeHub(tmp_path / "remote", files, error)
        monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
        return fake

    return install


def test_online_fetches_the_variant_and_falls_back_per_folder(online, tmp_path):
    w = _weights(tmp_path)
    fake = online(
        {
            "model_index.json": b"{}",
            "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.safetensors": w,
            "unet/diffusion_pytorch_model.fp16.safetensors": w,
            "unet/diffusion_pytorch_model.bin": b"PK\x03\x04",
            "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": w,
        }
    )
    snap = resolve_pretrained("org/pipe", subfolders=["unet", "vae"], variant="fp16")
    got = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    assert got == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert [c["local_files_only"] for c in fake.calls] == [False, False]


def test_no_network_says_how_to_download(online):
    from huggingface_hub.utils import LocalEntryNotFoundError

    online({}, error=LocalEntryNotFoundError("connection refused"))
    with pytest.raises(FileNotFoundError, match=r"(?s)could not be reached.*hf download org/pipe --include"):
        resolve_pretrained("org/pipe", subfolders=[])


def test_unknown_repository(online):
    from huggingface_hub.utils import RepositoryNotFoundError

    error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response object
    Exception.__init__(error, "404 Repository Not Found")
    online({}, error=error)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a repository"):
        resolve_pretrained("org/typo")
