"""Resolve a local folder, the shipped demo model or a Hugging Face hub id (`org/name`) to a local folder in
diffusers layout.

"demo" and "demo-refiner" name the tiny demo model shipped inside the package (sdxl/data/demo/, trained by
`python -m sdxl.demo.train`); a local folder of the same name takes precedence.

Hub ids go through huggingface_hub's cache (imported lazily). Only what loading needs is fetched: the JSON
configs, tokenizer files and the safetensors of the requested variant, never pickles and never the other
variant. `HF_HUB_OFFLINE` and `HF_HUB_CACHE` are read when called (huggingface_hub reads them once at import).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
DEMO_MODELS = {"demo": "base", "demo-refiner": "refiner"}  # alias -> folder under DEMO_ROOT
DEMO_ROOT = Path(__file__).resolve().parent.parent / "data" / "demo"


def demo_folder(alias: str) -> Path:
    """The shipped folder of a demo alias ("demo" or "demo-refiner")."""
    folder = DEMO_ROOT / DEMO_MODELS[alias]
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The demo model {alias!r} is not in this installation ({folder} has no model_index.json). Train it "
            f"with `python -m sdxl.demo.train --out DIR` and pass DIR/{DEMO_MODELS[alias]} instead of {alias!r}."
        )
    return folder


def looks_like_hub_id(value: str | os.PathLike) -> bool:
    """`org/name` with the Hub's allowed characters (a `Path` object is always a local path)."""
    if not isinstance(value, str) or len(value) > 96:
        return False
    return bool(_HUB_ID.match(value)) and ".." not in value and "--" not in value and not value.endswith(".git")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def weight_patterns(prefix: str, variant: str | None) -> list[str]:
    """Glob patterns of the safetensors weights (single or sharded) of one folder (`prefix` ends with "/")."""
    out = []
    for stem in WEIGHT_STEMS:
        if variant is None:
            out += [f"{prefix}{stem}.safetensors", f"{prefix}{stem}-?????-of-?????.safetensors"]
        else:
            out += [
                f"{prefix}{stem}.{variant}.safetensors",
                f"{prefix}{stem}.{variant}-?????-of-?????.safetensors",
                f"{prefix}{stem}-?????-of-?????.{variant}.safetensors",  # legacy sharded variant
            ]
    return out


def allow_patterns(subfolders: list[str] | None, variant: str | None) -> list[str]:
    """What to fetch: model_index.json, the configs/tokenizer files and the weights of each folder.

    `subfolders=None` means a model stored at the repository root; `[]` means model_index.json only.
    """
    patterns = ["model_index.json"]
    if subfolders is None:
        return patterns + ["config.json", "*.safetensors.index*.json"] + weight_patterns("", variant)
    for sub in subfolders:
        prefix = sub.strip("/") + "/"
        patterns += [f"{prefix}*.json", f"{prefix}*.txt"] + weight_patterns(prefix, variant)
    return patterns


def _has_weights(folder: Path, variant: str | None) -> bool:
    if not folder.is_dir():
        return False
    import fnmatch

    names = os.listdir(folder)
    return any(fnmatch.filter(names, p) for p in weight_patterns("", variant))


def download_hint(repo_id: str, patterns: list[str], cache_dir: str | None, revision: str | None) -> str:
    """The shell command that puts exactly these files in the cache."""
    cmd = ["hf", "download", repo_id, "--include", *patterns]
    if revision:
        cmd += ["--revision", revision]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    return " ".join(shlex.quote(c) for c in cmd)


def _not_cached(repo_id: str, patterns: list[str], cache_dir: str | None, revision: str | None, why: str) -> str:
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    return (
        f"{repo_id!r} is not a local folder, and the Hugging Face cache ({where}) does not hold the files needed "
        f"({why}). Download them first:\n"
        f"    {download_hint(repo_id, patterns, cache_dir, revision)}\n"
        "(`huggingface-cli download` takes the same arguments on huggingface_hub < 0.34), then run again; with "
        "HF_HUB_OFFLINE=1 they are read from the cache. Or pass the path of a local folder in diffusers layout "
        "instead of the hub id."
    )


def _snapshot(
    repo_id: str, patterns: list[str], *, offline: bool, cache_dir: str | None, revision: str | None
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (  # (not .errors: that module is newer than our minimum version)
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    why = "offline mode: HF_HUB_OFFLINE=1 or local_files_only=True" if offline else "the Hub could not be reached"
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=patterns,
                local_files_only=offline,
                cache_dir=cache_dir,
                revision=revision,
            )
        )
    except LocalEntryNotFoundError as e:  # not cached (offline or no network), or a partial snapshot
        raise FileNotFoundError(_not_cached(repo_id, patterns, cache_dir, revision, why)) from e
    except GatedRepoError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is a gated repository: accept its terms on https://huggingface.co/{repo_id} and log in "
            "with `hf auth login`, or pass a local folder."
        ) from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub (or it is private: "
            "log in with `hf auth login`)."
        ) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"{repo_id!r} has no revision {revision!r} on the Hub.") from e
    except (HfHubHTTPError, ConnectionError, OSError) as e:
        raise FileNotFoundError(_not_cached(repo_id, patterns, cache_dir, revision, f"{type(e).__name__}: {e}")) from e


_HUB_FILE_URL = re.compile(
    r"^https?://(?:www\.)?huggingface\.co/([^/]+/[^/]+)/(?:blob|resolve)/([^/]+)/(.+?)(?:\?.*)?$"
)


def resolve_single_file(path_or_url: str | os.PathLike, *, local_files_only: bool = False) -> Path:
    """A local checkpoint path as it is; a Hub file URL (`https://huggingface.co/ORG/NAME/blob/REV/FILE`, or
    `/resolve/`) through huggingface_hub's cache, as diffusers' `from_single_file` takes it. Offline and not
    cached is a FileNotFoundError with the `hf download` command."""
    text = str(path_or_url)
    if not text.startswith(("http://", "https://")):
        return Path(path_or_url).expanduser()
    match = _HUB_FILE_URL.match(text)
    if match is None:
        raise ValueError(
            f"{text} is not a Hugging Face Hub file URL (https://huggingface.co/ORG/NAME/blob/REVISION/FILE): "
            "download the file yourself and pass its local path."
        )
    repo_id, revision, filename = match.groups()
    offline = local_files_only or _env_true("HF_HUB_OFFLINE")
    folder = _snapshot(repo_id, [filename], offline=offline, cache_dir=None, revision=revision)
    return folder / filename


def resolve_file(
    path_or_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """One file `subfolder/filename` of a local folder or of a hub repository (through huggingface_hub's cache), as
    diffusers' loaders take `(pretrained_model_name_or_path, subfolder=..., weight_name=...)`."""
    relative = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        found = path / relative
        if not found.is_file():
            raise FileNotFoundError(f"{found} does not exist.")
        return found
    if not looks_like_hub_id(path_or_id):
        raise FileNotFoundError(f"{path_or_id} does not exist: give an existing folder or a hub id 'org/name'.")
    offline = local_files_only or _env_true("HF_HUB_OFFLINE")
    cache = str(cache_dir) if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None
    folder = _snapshot(str(path_or_id), [relative], offline=offline, cache_dir=cache, revision=revision)
    if not (folder / relative).is_file():
        raise FileNotFoundError(f"{path_or_id} has no file {relative}.")
    return folder / relative


def resolve_pretrained(
    path_or_id: str | os.PathLike,
    *,
    subfolders: list[str] | None = None,
    variant: str | None = None,
    variant_fallback: bool = True,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding what `subfolders` of `path_or_id` need (None: a model at the root).

    A local folder is returned as is; "demo" / "demo-refiner" give the shipped demo model's folder. A hub id is
    looked up in (or downloaded to) huggingface_hub's cache with the files of `variant`; with `variant_fallback`,
    model folders without that variant get their plain files (what diffusers' pipeline loading does). Offline and
    not cached is a FileNotFoundError with the download command.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if isinstance(path_or_id, str) and path_or_id in DEMO_MODELS:
        return demo_folder(path_or_id)
    if path.exists():
        raise ValueError(
            f"{path} is a file; from_pretrained expects a folder in diffusers layout (config.json or "
            "model_index.json) or a hub id 'org/name'."
        )
    if not looks_like_hub_id(path_or_id):
        raise FileNotFoundError(f"{path_or_id} does not exist: give an existing folder or a hub id 'org/name'.")

    repo_id = str(path_or_id)
    offline = local_files_only or _env_true("HF_HUB_OFFLINE")
    cache = str(cache_dir) if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None
    patterns = allow_patterns(subfolders, variant)
    folder = _snapshot(repo_id, patterns, offline=offline, cache_dir=cache, revision=revision)

    names: list[str | None] = [None] if subfolders is None else list(subfolders)

    def sub(name: str | None) -> Path:
        return folder if name is None else folder / name

    if variant is not None and variant_fallback:
        plain = [n for n in names if (sub(n) / "config.json").is_file() and not _has_weights(sub(n), variant)]
        if plain:
            logger.info("%s: no %s weights in %s; fetching the plain ones", repo_id, variant, plain)
            extra = allow_patterns(None if plain == [None] else [n for n in plain if n], None)
            patterns += [p for p in extra if p not in patterns]
            folder = _snapshot(repo_id, patterns, offline=offline, cache_dir=cache, revision=revision)

    if offline:
        # A cached snapshot may be partial (only some components downloaded): check before loading.
        missing = []
        if subfolders is None and not (folder / "config.json").is_file():
            missing.append("config.json")
        if subfolders == [] and not (folder / "model_index.json").is_file():
            missing.append("model_index.json")
        for n in names:
            f = sub(n)
            if n is not None and (not f.is_dir() or not any(f.iterdir())):
                missing.append(f"{n}/")
            elif (f / "config.json").is_file() and not (
                _has_weights(f, variant) or (variant is not None and variant_fallback and _has_weights(f, None))
            ):
                missing.append(f"the weights in {n or '.'}/")
        if missing:
            raise FileNotFoundError(
                _not_cached(repo_id, patterns, cache, revision, f"the cached snapshot lacks {', '.join(missing)}")
            )
    return folder
