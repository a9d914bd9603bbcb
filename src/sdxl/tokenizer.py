"""CLIP's byte-level BPE tokenizer on the `tokenizers` library, with transformers' `CLIPTokenizer` surface.

The pipeline reproduces transformers 5.23's `CLIPTokenizer` (models/clip/tokenization_clip.py): NFC, runs of
whitespace -> one space, lower-case; CLIP's split regex then byte-level mapping; BPE with a `</w>` end-of-word
suffix; byte-level decoding with `</w>` turned back into spaces. The start/end tokens, truncation and padding are
done here in Python (what transformers delegates to the backend's post-processor and padding), so one tokenizer
can be shared between threads.

Vocabularies load from the official hub layout (vocab.json + merges.txt + tokenizer_config.json +
special_tokens_map.json), from a `tokenizer.json` (what transformers 5 saves), or from the CLIP BPE file this
package ships (`from_shipped_vocab`), for checkpoints that come without tokenizer files.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import re
from collections import UserDict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
END_OF_WORD = "</w>"
# CLIP's word split (open_clip simple_tokenizer.py); the special tokens stay whole.
_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SHIPPED_VOCAB = "data/bpe_simple_vocab_16e6.txt.gz"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_PADDINGS = ("longest", "max_length", "do_not_pad")


def _byte_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table, as a list in vocabulary order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100 upwards in byte order.
    The vocabulary lists the printable ones first, then the remapped ones.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


@functools.lru_cache(maxsize=1)
def _shipped_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
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


class BatchEncoding(UserDict):
    """The tokenizer's result: a dict (`enc["input_ids"]`) that also reads as attributes (`enc.input_ids`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "data":  # copy/pickle probe these before `data` exists
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self.data)}") from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        """Move tensor fields to `device` (as transformers' BatchEncoding.to)."""
        self.data = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.data.items()}
        return self


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def _hub_folder(
    repo_id: str, subfolder: str | None, cache_dir: Any, revision: str | None, local_files_only: bool
) -> Path:
    """The cached snapshot folder holding a hub repository's tokenizer files (downloaded unless offline)."""
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        root = snapshot_download(
            repo_id, allow_patterns=[f"{prefix}*.json", f"{prefix}*.txt"], cache_dir=cache_dir, revision=revision,
            local_files_only=offline,
        )
    except Exception as e:  # huggingface_hub's offline/not-found errors all mean: no such tokenizer here
        raise FileNotFoundError(
            f"Tokenizer {repo_id!r} is neither a local folder nor in the Hugging Face cache ({type(e).__name__}: {e})."
        ) from e
    return Path(root) / subfolder if subfolder else Path(root)


class CLIPTokenizer:
    """CLIP BPE tokenizer, callable like transformers' `CLIPTokenizer`.

    SDXL has two: the first pads with "<|endoftext|>" (49407), the second with "!" (0). Both put
    <|startoftext|> (49406) first and <|endoftext|> (49407) last and hold `model_max_length` = 77 tokens.
    """

    model_input_names = ("input_ids", "attention_mask")
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]] | tuple[tuple[str, str], ...],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        unk_token: str = EOS_TOKEN,
        pad_token: str = EOS_TOKEN,
        model_max_length: int = MODEL_MAX_LENGTH,
        added_tokens: list[AddedToken] | None = None,
    ):
        """Build from a BPE vocabulary and merge list.

        `added_tokens` (matched whole before BPE, as transformers' added tokens) are registered in order; the
        four named tokens that are not among them are then added as special tokens.
        """
        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.model_max_length = model_max_length
        self._warned_too_long = False
        try:
            model = BPE(
                vocab=self._vocab,
                merges=self._merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD,
                fuse_unk=False,
                unk_token=unk_token,
            )
        except Exception as e:  # the Rust side raises plain Exception for inconsistent vocab/merges
            raise ValueError(f"Invalid CLIP BPE vocabulary/merges: {e}") from e
        backend = Tokenizer(model)
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        self._backend = backend
        listed = list(added_tokens or [])
        named = {self.bos_token, self.eos_token, self.unk_token, self.pad_token}
        for tok in listed:
            add = backend.add_special_tokens if (tok.special or tok.content in named) else backend.add_tokens
            add([_copy_added(tok, special=True) if tok.content in named else tok])
        listed_contents = {t.content for t in listed}
        for content in (self.bos_token, self.eos_token, self.unk_token, self.pad_token):
            if content not in listed_contents:
                backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])

    # ---- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_shipped_vocab(cls, pad_token: str = EOS_TOKEN, model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
        """The CLIP tokenizer over the vocabulary shipped with this package.

        `pad_token="<|endoftext|>"` gives SDXL's first tokenizer, `pad_token="!"` its second.
        """
        vocab, merges = _shipped_vocab()
        return cls(vocab, merges, pad_token=pad_token, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        subfolder: str | None = None,
        *,
        pad_token: str | None = None,
        model_max_length: int | None = None,
        cache_dir: str | Path | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
    ) -> CLIPTokenizer:
        """Load a tokenizer folder: `tokenizer.json` (transformers 5) or vocab.json + merges.txt (hub layout), from a
        local path or a hub id ("org/name", through huggingface_hub's cache; `cache_dir`, `revision`,
        `local_files_only` and HF_HUB_OFFLINE as in transformers).

        tokenizer_config.json / special_tokens_map.json, when present, give the special tokens (e.g. `pad_token`
        "!" for SDXL's second tokenizer) and `model_max_length` (77 if absent); keyword arguments override them.
        """
        folder = Path(path) / subfolder if subfolder else Path(path)
        if not folder.is_dir() and _HUB_ID.fullmatch(str(path)):
            folder = _hub_folder(str(path), subfolder, cache_dir, revision, local_files_only)
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
        for key, default in zip(_SPECIAL_KEYS, (BOS_TOKEN, EOS_TOKEN, EOS_TOKEN, EOS_TOKEN)):
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
            contents = {_token_content(v) for k in _SPECIAL_KEYS for v in (config.get(k), special_map.get(k)) if v}
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
        tok = cls(
            vocab,
            merges,
            bos_token=_token_content(names["bos_token"]),
            eos_token=_token_content(names["eos_token"]),
            unk_token=_token_content(names["unk_token"]),
            pad_token=_token_content(names["pad_token"]),
            model_max_length=max_len,
            added_tokens=tokens,
        )
        for index, added in listed:
            if tok._backend.token_to_id(added.content) != index:
                raise ValueError(
                    f"Added token {added.content!r} has id {index} in {str(folder)!r} but would get "
                    f"{tok._backend.token_to_id(added.content)}: the added tokens do not follow the vocabulary."
                )
        return tok

    def save_pretrained(self, folder: str | Path) -> tuple[str, ...]:
        """Write the official hub layout: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = dict(sorted(self._vocab.items(), key=lambda kv: kv[1]))
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges)
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
            for i, t in sorted(self.added_tokens_decoder.items())
        }
        specials = {key: getattr(self, key) for key in _SPECIAL_KEYS}
        config = {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            **specials,
            "clean_up_tokenization_spaces": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": self.model_max_length,
            "tokenizer_class": "CLIPTokenizer",
        }
        files = {"tokenizer_config.json": config, "special_tokens_map.json": specials}
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tuple(str(folder / n) for n in ("vocab.json", "merges.txt", *files))

    # ---- vocabulary ---------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the vocabulary with the added tokens."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """token -> id, added tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """id -> AddedToken for every added token (the special tokens included)."""
        return self._backend.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """content -> id for every added token, sorted by id."""
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        """content -> id for every added token (as `added_tokens_encoder`)."""
        return self.added_tokens_encoder

    def add_tokens(self, new_tokens: str | AddedToken | list[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens matched whole before BPE (textual inversion); returns how many were new.

        A plain string is matched in the normalised (lower-cased) text unless `special_tokens=True`, as in
        transformers; pass a `tokenizers.AddedToken` to choose.
        """
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        for t in new_tokens:
            if not isinstance(t, (str, AddedToken)):
                raise TypeError(f"add_tokens takes str or tokenizers.AddedToken items, got {type(t).__name__}: {t!r}")
        if not new_tokens:
            return 0
        if special_tokens:
            return self._backend.add_special_tokens(list(new_tokens))
        return self._backend.add_tokens(list(new_tokens))

    @property
    def bos_token_id(self) -> int:
        return self._backend.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self._backend.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int:
        return self._backend.token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int:
        return self._backend.token_to_id(self.unk_token)

    @property
    def all_special_tokens(self) -> list[str]:
        """The named special tokens, without duplicates."""
        return list(dict.fromkeys([self.bos_token, self.eos_token, self.unk_token, self.pad_token]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._backend.token_to_id(t) for t in self.all_special_tokens]

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (no post-processor, padding or truncation set on it)."""
        return self._backend

    def convert_ids_to_tokens(self, ids: int | list[int] | torch.Tensor, skip_special_tokens: bool = False):
        """id -> token string (a list for a list); ids out of range give None, as transformers' fast tokenizer."""
        if hasattr(ids, "tolist"):  # torch tensor / numpy array
            ids = ids.tolist()
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """token string -> id (the unknown token's id for strings that are not in the vocabulary)."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # ---- encoding -----------------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The BPE token strings of `text`, without start/end tokens."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> list[int] | torch.Tensor:
        """Token ids of one string (a (1, T) tensor with `return_tensors="pt"`)."""
        enc = self(
            text,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
        )
        return enc["input_ids"]

    def __call__(
        self,
        text: str | list[str] | tuple[str, ...],
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
    ) -> BatchEncoding:
        """Tokenize a string or a batch of strings, as transformers' tokenizer call.

        padding: "max_length" (to `max_length`, default `model_max_length`), "longest" / True (to the longest in
        the batch), False / "do_not_pad". truncation: True / "longest_first" cuts to `max_length` (default
        `model_max_length`) tokens including start and end; giving only `max_length` also truncates.
        return_tensors: None (lists of ints; a flat list for one string), "pt" (LongTensor (B, T)) or "np".
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text must be a str or a list of str, got an item of type {type(t).__name__}: {t!r}")
        pad_mode, truncate, max_length = self._strategies(padding, truncation, max_length)
        n_special = 2 if add_special_tokens else 0
        if truncate and max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the start and end tokens (needs >= 2).")

        ids = []
        for enc in self._backend.encode_batch(texts, add_special_tokens=False):
            content = enc.ids[: max_length - n_special] if truncate else enc.ids
            seq = [self.bos_token_id, *content, self.eos_token_id] if add_special_tokens else list(content)
            if max_length is None and len(seq) > self.model_max_length and not self._warned_too_long:
                logger.warning(
                    "Token indices sequence length is longer than the specified maximum sequence length for this "
                    "model (%d > %d). Running this sequence through the model will result in indexing errors",
                    len(seq),
                    self.model_max_length,
                )
                self._warned_too_long = True
            ids.append(seq)

        if pad_mode == "max_length":
            target = max_length
        elif pad_mode == "longest":
            target = max((len(s) for s in ids), default=0)
        else:
            target = 0
        masks = [[1] * len(s) + [0] * max(0, target - len(s)) for s in ids]
        ids = [s + [self.pad_token_id] * max(0, target - len(s)) for s in ids]

        data = {"input_ids": ids}
        if return_attention_mask:
            data["attention_mask"] = masks
        if return_tensors is not None:
            data = {k: _to_tensor(v, return_tensors, k) for k, v in data.items()}
        elif not batched:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data)

    def _strategies(
        self, padding: bool | str, truncation: bool | str | None, max_length: int | None
    ) -> tuple[str, bool, int | None]:
        """(padding mode, truncate?, max_length) with transformers' defaults."""
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int or None, got {max_length!r}.")
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # transformers: a bare max_length means truncation
        if padding is True:
            pad_mode = "longest"
        elif padding is False:
            pad_mode = "do_not_pad"
        elif isinstance(padding, str) and padding in _PADDINGS:
            pad_mode = padding
        else:
            raise ValueError(f"padding={padding!r} is not supported; use True, False or one of {list(_PADDINGS)}.")
        if truncation is None or truncation is False or truncation == "do_not_truncate":
            truncate = False
        elif truncation is True or truncation == "longest_first":
            truncate = True
        else:
            raise ValueError(
                f"truncation={truncation!r} is not supported; use True, False, 'longest_first' or 'do_not_truncate'."
            )
        if max_length is None and (pad_mode == "max_length" or truncate):
            max_length = self.model_max_length
        return pad_mode, truncate, max_length

    # ---- decoding -----------------------------------------------------------------------------------------------

    def decode(
        self,
        token_ids: int | list[int] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of a sequence of ids; `</w>` becomes a space and the ends are stripped, as transformers does.

        `clean_up_tokenization_spaces` is accepted and has no effect: transformers skips it for BPE tokenizers.
        """
        if hasattr(token_ids, "tolist"):  # torch tensor / numpy array
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._backend.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)
        return text.replace(END_OF_WORD, " ").strip()

    def batch_decode(
        self,
        sequences: list[list[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """`decode` for each sequence of a batch."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(vocab_size={self.vocab_size}, added={len(self) - self.vocab_size}, "
            f"pad_token={self.pad_token!r}, model_max_length={self.model_max_length})"
        )


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


def _copy_added(tok: AddedToken, special: bool) -> AddedToken:
    return AddedToken(
        tok.content,
        single_word=tok.single_word,
        lstrip=tok.lstrip,
        rstrip=tok.rstrip,
        normalized=tok.normalized,
        special=special,
    )


def _to_tensor(rows: list[list[int]], kind: str, name: str):
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"Cannot make a tensor of {name}: the sequences have different lengths {sorted(lengths)}; "
            "use padding='max_length' (with truncation=True) or padding='longest'."
        )
    if kind == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.long)
    if kind == "np":
        import numpy as np

        return np.asarray(rows, dtype=np.int64)
    raise ValueError(f"return_tensors={kind!r} is not supported; use None, 'pt' or 'np'.")
