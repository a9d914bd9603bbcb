"""CLIP's byte-level BPE tokenizer on the `tokenizers` library, with transformers' `CLIPTokenizer` surface.

The pipeline reproduces transformers 5.23's `CLIPTokenizer` (models/clip/tokenization_clip.py): NFC, runs of
whitespace -> one space, lower-case; CLIP's split regex then byte-level mapping; BPE with a `</w>` end-of-word
suffix; byte-level decoding with `</w>` turned back into spaces. The start/end tokens, truncation and padding are
done here in Python (what transformers delegates to the backend's post-processor and padding), so one tokenizer
can be shared between threads. Reading and writing tokenizer folders lives in files.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from sdxl.tokenizer.encoding import BatchEncoding, pad_batch, strategies, to_tensor
from sdxl.tokenizer.files import (
    BOS_TOKEN,
    END_OF_WORD,
    EOS_TOKEN,
    HUB_ID,
    MODEL_MAX_LENGTH,
    SPECIAL_KEYS,
    copy_added,
    hub_folder,
    read_folder,
    shipped_vocab,
    write_folder,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# CLIP's word split (open_clip simple_tokenizer.py); the special tokens stay whole.
_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


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
            add([copy_added(tok, special=True) if tok.content in named else tok])
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
        vocab, merges = shipped_vocab()
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
        if not folder.is_dir() and HUB_ID.fullmatch(str(path)):
            folder = hub_folder(str(path), subfolder, cache_dir, revision, local_files_only)
        files = read_folder(folder, pad_token, model_max_length)
        tok = cls(
            files.vocab,
            files.merges,
            **files.names,
            model_max_length=files.model_max_length,
            added_tokens=files.added_tokens,
        )
        listed = files.listed
        for index, added in listed:
            if tok._backend.token_to_id(added.content) != index:
                raise ValueError(
                    f"Added token {added.content!r} has id {index} in {str(folder)!r} but would get "
                    f"{tok._backend.token_to_id(added.content)}: the added tokens do not follow the vocabulary."
                )
        return tok

    def save_pretrained(self, folder: str | Path) -> tuple[str, ...]:
        """Write the official hub layout: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
        specials = {key: getattr(self, key) for key in SPECIAL_KEYS}
        return write_folder(
            folder, self._vocab, self._merges, self.added_tokens_decoder, specials, self.model_max_length
        )

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
        pad_mode, truncate, max_length = strategies(padding, truncation, max_length, self.model_max_length)
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

        ids, masks = pad_batch(ids, pad_mode, max_length, self.pad_token_id)
        data = {"input_ids": ids}
        if return_attention_mask:
            data["attention_mask"] = masks
        if return_tensors is not None:
            data = {k: to_tensor(v, return_tensors, k) for k, v in data.items()}
        elif not batched:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data)

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
