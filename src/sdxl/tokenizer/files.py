"""CLIP tokenizer files: the vocabulary shipped with the package, and reading/writing tokenizer folders.

Two folder layouts load: the official hub one (vocab.json + merges.txt + tokenizer_config.json +
special_tokens_map.json) and transformers 5's `tokenizer.json`. Which tokens are special, and in what order the
added tokens get their ids, follows transformers 5.23 (models/clip/tokenization_clip.py and the base tokenizer).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import AddedToken

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
END_OF_WORD = "</w>"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_SHIPPED_VOCAB = "data/bpe_simple_vocab_16e6.txt.gz"

def _byte_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table, as a list in vocabulary order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100 upwards in byte order.
    The vocabulary lists the printable ones first, then the remapped ones.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


@functools.lru_cache(maxsize=1)
def shipped_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """(vocab, merges) from the packaged bpe_simple_vocab_16e6.txt.gz, built as open_clip builds them.

    Bytes, bytes + "</w>", one entry per merge (48,894 of them), then the two special tokens: 49,408 in all.
    """
    raw = resources.files("sdxl").joinpath(_SHIPPED_VOCAB).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    n_merges = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file (line 0 is a header)
    merges = tuple(tuple(line.split()) for line in lines[1 : n_merges + 1])
    base = _byte_to_unicode()
    tokens = base + [b + END_OF_WORD for b in base] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges



@dataclass
class TokenizerFiles:
    """What a tokenizer folder holds: the BPE tables, the special tokens' contents, the added tokens (in id order,
    the named special tokens that were not listed appended) and the listed added tokens with their ids."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    names: dict[str, str]
    model_max_length: int
    added_tokens: list[AddedToken]
    listed: list[tuple[int, AddedToken]]


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_folder(
    repo_id: str,
    subfolder: str | None,
    cache_dir: Any = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """The cached snapshot folder holding a hub repository's tokenizer files (downloaded unless offline:
    `local_files_only` or HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        root = snapshot_download(
            repo_id,
            allow_patterns=[f"{prefix}*.json", f"{prefix}*.txt"],
            cache_dir=cache_dir,
            revision=revision,
            local_files_only=offline,
        )
    except Exception as e:  # huggingface_hub's offline/not-found errors all mean: no such tokenizer here
        raise FileNotFoundError(
            f"Tokenizer {repo_id!r} is neither a local folder nor in the Hugging Face cache ({type(e).__name__}: {e})."
        ) from e
    return Path(root) / subfolder if subfolder else Path(root)


def read_folder(folder: Path, pad_token: str | None = None, model_max_length: int | None = None) -> TokenizerFiles:
    """Read a tokenizer folder (see the module docstring); `pad_token`/`model_max_length` override the files."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Tokenizer folder {str(folder)!r} does not exist (expected a local directory).")
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    smap_file = folder / "special_tokens_map.json"
    special_map = _read_json(smap_file) if smap_file.is_file() else {}

    listed: list[tuple[int, AddedToken]] = []
    if (folder / "tokenizer.json").is_file():
        vocab, merges, listed = _read_tokenizer_json(folder / "tokenizer.json")
        source = folder / "tokenizer.json"
    elif (folder / "vocab.json").is_file() or (folder / "merges.txt").is_file():
        vocab = _read_json(folder / "vocab.json")
        merges = _read_merges(folder / "merges.txt")
        source = folder / "vocab.json"
    else:
        raise FileNotFoundError(
            f"No tokenizer files in {str(folder)!r}: expected tokenizer.json or vocab.json + merges.txt "
            "(or build one from the packaged vocabulary with CLIPTokenizer.from_shipped_vocab())."
        )
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{str(source)!r} does not hold a BPE vocabulary (token -> id mapping).")

    # transformers reads special_tokens_map.json only for configs without an added_tokens_decoder.
    has_decoder = "added_tokens_decoder" in config
    names = {}
    for key, default in zip(SPECIAL_KEYS, (BOS_TOKEN, EOS_TOKEN, EOS_TOKEN, EOS_TOKEN)):
        names[key] = config.get(key, default) if has_decoder else special_map.get(key, config.get(key, default))
    if pad_token is not None:
        names["pad_token"] = pad_token

    # Flags of added tokens: tokenizer_config's added_tokens_decoder, else tokenizer.json's list, else the
    # legacy added_tokens.json. Named tokens not listed there are added after them, in the order bos, eos,
    # unk, pad, with their own entry's flags (a plain string: special, not normalised); the last one wins.
    if has_decoder:
        listed = _parse_added_tokens_decoder(config["added_tokens_decoder"], folder / "tokenizer_config.json")
    elif not listed and (folder / "added_tokens.json").is_file():
        # special = named in the config files (transformers' legacy rule; defaults do not count)
        contents = {_token_content(v) for k in SPECIAL_KEYS for v in (config.get(k), special_map.get(k)) if v}
        added = _read_json(folder / "added_tokens.json")
        listed = [
            (int(i), AddedToken(t, special=t in contents, normalized=t not in contents)) for t, i in added.items()
        ]
    listed.sort(key=lambda item: item[0])
    listed_contents = {tok.content for _, tok in listed}
    tokens = [tok for _, tok in listed]
    for value in names.values():
        if _token_content(value) in listed_contents:
            continue
        if isinstance(value, dict):
            tokens.append(_added_token_from_dict(value, special=True))
        else:
            tokens.append(AddedToken(value, special=True, normalized=False))

    max_len = model_max_length if model_max_length is not None else int(config.get("model_max_length", 77))
    return TokenizerFiles(
        vocab, merges, {k: _token_content(v) for k, v in names.items()}, max_len, tokens, listed
    )


def write_folder(
    folder: str | Path,
    vocab_in: dict[str, int],
    merges: list[tuple[str, str]],
    added_tokens: dict[int, AddedToken],
    specials_in: dict[str, str],
    model_max_length: int,
) -> tuple[str, ...]:
    """Write the official hub layout: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(vocab_in.items(), key=lambda kv: kv[1]))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    decoder = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(added_tokens.items())
    }
    specials = {key: specials_in[key] for key in SPECIAL_KEYS}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        **specials,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": model_max_length,
        "tokenizer_class": "CLIPTokenizer",
    }
    files = {"tokenizer_config.json": config, "special_tokens_map.json": specials}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tuple(str(folder / n) for n in ("vocab.json", "merges.txt", *files))


# ---- file readers ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"Tokenizer file {str(path)!r} is missing.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Tokenizer file {str(path)!r} is not valid JSON: {e}") from e


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Tokenizer file {str(path)!r} is missing (vocab.json needs merges.txt beside it).")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"Tokenizer file {str(path)!r} is not UTF-8 text: {e}") from e
    merges = []
    for n, line in enumerate(lines, start=1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"Tokenizer file {str(path)!r} line {n}: expected two tokens 'a b', got {line!r}.")
        merges.append((parts[0], parts[1]))
    return merges


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[tuple[int, AddedToken]]]:
    """(vocab, merges, added tokens) of a `tokenizers` serialisation (the CLIP pipeline itself is rebuilt)."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
        kind = model.get("type") if isinstance(model, dict) else None
        raise ValueError(f"Tokenizer file {str(path)!r} does not hold a BPE model (model type {kind!r}).")
    merges = []
    for m in model.get("merges", []):
        pair = m.split(" ") if isinstance(m, str) else m
        if len(pair) != 2:
            raise ValueError(f"Tokenizer file {str(path)!r}: bad merge entry {m!r} (expected two tokens).")
        merges.append((pair[0], pair[1]))
    listed = []
    for entry in data.get("added_tokens", []):
        entry = dict(entry)
        listed.append((int(entry.pop("id")), _added_token_from_dict(entry)))
    return model["vocab"], merges, listed


def _parse_added_tokens_decoder(decoder: Any, path: Path) -> list[tuple[int, AddedToken]]:
    if isinstance(decoder, dict):
        try:
            return [(int(i), _added_token_from_dict(entry)) for i, entry in decoder.items()]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{str(path)!r}: bad added_tokens_decoder entry: {e}") from e
    raise ValueError(f"{str(path)!r}: added_tokens_decoder must map ids to token entries, got {decoder!r}.")


def _token_content(value: str | dict) -> str:
    """A special token given as a string or as a serialised AddedToken dict."""
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise ValueError(f"A special token must be a string or an AddedToken entry, got {value!r}.")


def _added_token_from_dict(entry: dict, special: bool | None = None) -> AddedToken:
    is_special = bool(entry.get("special", False)) if special is None else special
    return AddedToken(
        entry["content"],
        single_word=bool(entry.get("single_word", False)),
        lstrip=bool(entry.get("lstrip", False)),
        rstrip=bool(entry.get("rstrip", False)),
        normalized=bool(entry.get("normalized", not is_special)),
        special=is_special,
    )


def copy_added(tok: AddedToken, special: bool) -> AddedToken:
    return AddedToken(
        tok.content,
        single_word=tok.single_word,
        lstrip=tok.lstrip,
        rstrip=tok.rstrip,
        normalized=tok.normalized,
        special=special,
    )
