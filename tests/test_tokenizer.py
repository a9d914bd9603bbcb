"""sdxl.tokenizer.CLIPTokenizer against transformers' CLIPTokenizer on the same vocabulary files."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
import transformers

from sdxl.tokenizer import BatchEncoding, CLIPTokenizer

EOT = "<|endoftext|>"

CORPUS = [
    "",
    " ",
    "   \t\n  ",
    "a",
    "A photo of a CAT",
    "a photo of an astronaut riding a horse on mars",
    "café naïve résumé façade",
    "Ångström Øresund Straße ÉCOLE",
    "e\u0301 combining accent vs \u00e9 precomposed",
    "ﬁ ligature ｆｕｌｌｗｉｄｔｈ ①②",
    "東京タワーの夜景",
    "一只可爱的猫 in a garden",
    "한국어 텍스트 Привет мир",
    "مرحبا بالعالم שלום",
    "emoji 😀🎉👍🏽 🏳️‍🌈 ❤️",
    "!!!",
    "hello!!! world??? !",
    "...---... ,,, ;;; :::",
    "a,b;c:d/e\\f",
    "don't won't it's we're they've I'm you'll he'd",
    "DON'T IT'S WE'RE",
    "O'Neil's rock'n'roll ''quoted''",
    "12345 3.14159 1,000,000 2024-01-01",
    "4k 8K uhd 1080p x2.5",
    "MiXeD CaSe WoRdS",
    "line1\nline2\r\nline3",
    "tab\tseparated\t\tvalues",
    "<b>bold</b> <img src='x.png'/> &amp; &lt;",
    "(masterpiece:1.2), (best quality), [worst quality:0.8]",
    "word++ word-- (word)1.1 [[word]] ((word))",
    "a cat AND a dog | blend",
    "<|startoftext|> inside <|endoftext|> tokens",
    "<|ENDOFTEXT|> upper <|StartOfText|>",
    "snake_case kebab-case camelCase",
    "http://example.com/path?q=1&b=2#frag",
    "C:\\Users\\name\\file.txt",
    "$100 €50 £30 ¥1000 50%",
    "user@example.com #hashtag @mention",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "control\u0007bell and nul\u0000",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    " ".join(["photorealistic"] * 50),
    "a, " * 60,
    "x" * 300,
    "!" * 100,
    "a very long prompt, " + ", ".join(f"detail number {i}" for i in range(40)),
]

CALLS = [
    {},
    {"padding": "max_length", "max_length": 77, "truncation": True},
    {"padding": "max_length", "truncation": True},
    {"truncation": True},
    {"padding": "longest"},
    {"padding": True, "truncation": True},
    {"max_length": 20},
    {"padding": "max_length", "max_length": 30},
    {"add_special_tokens": False, "truncation": True, "max_length": 10},
]


# ---- helpers / fixtures -------------------------------------------------------------------------------------------


def _added(content: str, normalized: bool, special: bool, legacy: bool = False) -> dict:
    entry = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
    if legacy:
        return {"__type": "AddedToken", **entry}
    return {**entry, "special": special}


def write_hub_layout(folder: Path, vocab_dir: Path, pad_token: str, legacy: bool) -> Path:
    """The official SDXL tokenizer folder: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json.

    legacy=False: transformers 4.3x style (added_tokens_decoder, <|startoftext|> normalized);
    legacy=True: the older style with `__type: AddedToken` dicts (all normalized).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((vocab_dir / name).read_bytes())
    common = {
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
    }
    if legacy:
        specials = {
            "bos_token": _added("<|startoftext|>", True, True, legacy=True),
            "eos_token": _added(EOT, True, True, legacy=True),
            "unk_token": _added(EOT, True, True, legacy=True),
        }
        config = {**common, **specials}
        special_map = {
            **{k: {kk: vv for kk, vv in v.items() if kk != "__type"} for k, v in specials.items()},
            "pad_token": pad_token,
        }
    else:
        decoder = {"49406": _added("<|startoftext|>", True, False), "49407": _added(EOT, False, False)}
        if pad_token == "!":
            decoder = {"0": _added("!", False, True), **decoder}
        config = {
            **common,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": [],
            "bos_token": "<|startoftext|>",
            "eos_token": EOT,
            "unk_token": EOT,
        }
        special_map = {"bos_token": "<|startoftext|>", "eos_token": EOT, "pad_token": pad_token, "unk_token": EOT}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return folder


def hf_tokenizer(folder: Path, **kwargs):
    return transformers.CLIPTokenizer.from_pretrained(str(folder), **kwargs)


@pytest.fixture(scope="module")
def pairs(clip_vocab_dir, tiny_base, tmp_path_factory) -> dict[str, tuple[CLIPTokenizer, object]]:
    """(ours, transformers') for each file layout and both pad tokens."""
    base, _ = tiny_base
    root = tmp_path_factory.mktemp("hub_layouts")
    out = {}
    for pad, tag in ((EOT, "eot"), ("!", "bang")):
        out[f"vocab_merges-{tag}"] = (
            CLIPTokenizer.from_pretrained(clip_vocab_dir, pad_token=pad),
            hf_tokenizer(clip_vocab_dir, pad_token=pad, model_max_length=77),
        )
        out[f"shipped-{tag}"] = (CLIPTokenizer.from_shipped_vocab(pad_token=pad), out[f"vocab_merges-{tag}"][1])
        for legacy in (False, True):
            folder = write_hub_layout(root / f"{tag}-{legacy}", clip_vocab_dir, pad, legacy)
            out[f"hub{'_legacy' if legacy else ''}-{tag}"] = (
                CLIPTokenizer.from_pretrained(folder),
                hf_tokenizer(folder),
            )
    out["tokenizer_json-eot"] = (
        CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        hf_tokenizer(base / "tokenizer"),
    )
    out["tokenizer_json-bang"] = (
        CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
        hf_tokenizer(base / "tokenizer_2"),
    )
    return out


LAYOUTS = [
    f"{layout}-{tag}"
    for layout in ("vocab_merges", "shipped", "hub", "hub_legacy", "tokenizer_json")
    for tag in ("eot", "bang")
]


def assert_same_encoding(ours, theirs, text, **kwargs):
    a, b = ours(text, **kwargs), theirs(text, **kwargs)
    assert a["input_ids"] == b["input_ids"], (text, kwargs)
    assert a.attention_mask == b["attention_mask"], (text, kwargs)


# ---- parity -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ids_match_transformers_on_corpus(pairs, layout):
    ours, theirs = pairs[layout]
    for text in CORPUS:
        for kwargs in CALLS:
            assert_same_encoding(ours, theirs, text, **kwargs)
        assert ours.tokenize(text) == theirs.tokenize(text), text
        assert ours.encode(text) == theirs.encode(text), text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_special_tokens_and_sizes_match(pairs, layout):
    ours, theirs = pairs[layout]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(ours, name + "_id") == getattr(theirs, name + "_id"), name
    assert ours.model_max_length == theirs.model_max_length == 77
    assert ours.vocab_size == theirs.vocab_size
    assert len(ours) == len(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    expected = {i: (t.content, t.special, t.normalized) for i, t in theirs.added_tokens_decoder.items()}
    assert {i: (t.content, t.special, t.normalized) for i, t in ours.added_tokens_decoder.items()} == expected


def test_sdxl_pad_ids(pairs):
    assert pairs["shipped-eot"][0].pad_token_id == 49407
    assert pairs["shipped-bang"][0].pad_token_id == 0
    assert pairs["shipped-bang"][0].bos_token_id == 49406
    assert pairs["shipped-bang"][0].eos_token_id == 49407


@pytest.mark.parametrize("layout", ["shipped-eot", "shipped-bang", "tokenizer_json-bang"])
def test_batches_and_padding_variants(pairs, layout):
    ours, theirs = pairs[layout]
    batch = [CORPUS[5], CORPUS[0], CORPUS[-1], CORPUS[12], CORPUS[-3]]
    for kwargs in CALLS + [{"padding": False}, {"padding": "do_not_pad", "truncation": True}]:
        assert_same_encoding(ours, theirs, batch, **kwargs)
    for kwargs in (
        {"padding": "max_length", "max_length": 77, "truncation": True},
        {"padding": "longest"},
        {"padding": True, "truncation": True, "max_length": 16},
    ):
        a, b = ours(batch, return_tensors="pt", **kwargs), theirs(batch, return_tensors="pt", **kwargs)
        assert a.input_ids.dtype == torch.long and a.input_ids.shape == b.input_ids.shape
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a["attention_mask"], b.attention_mask)


def test_return_types(pairs):
    ours, theirs = pairs["shipped-eot"]
    one = ours("a cat")
    assert isinstance(one, BatchEncoding) and one.input_ids == theirs("a cat").input_ids
    assert all(isinstance(i, int) for i in one.input_ids)
    two = ours(["a cat", "a dog"])
    assert two["input_ids"] == theirs(["a cat", "a dog"])["input_ids"]
    pt = ours("a cat", padding="max_length", truncation=True, return_tensors="pt")
    assert pt.input_ids.shape == (1, 77)
    assert torch.equal(
        pt.input_ids, theirs("a cat", padding="max_length", truncation=True, return_tensors="pt").input_ids
    )
    np_ids = ours(["a cat", "a dog"], padding=True, return_tensors="np").input_ids
    assert np_ids.dtype.name == "int64"
    assert np_ids.tolist() == theirs(["a cat", "a dog"], padding=True, return_tensors="np").input_ids.tolist()
    assert torch.equal(ours.encode("a cat", return_tensors="pt"), theirs.encode("a cat", return_tensors="pt"))
    moved = ours("a cat", return_tensors="pt").to("cpu")
    assert moved.input_ids.device.type == "cpu"
    assert "attention_mask" not in ours("a cat", return_attention_mask=False)


@pytest.mark.parametrize("layout", ["shipped-eot", "shipped-bang"])
@pytest.mark.parametrize("truncation", [True, False])
def test_compel_style_calls(pairs, layout, truncation):
    ours, theirs = pairs[layout]
    texts = [CORPUS[28], CORPUS[-1], CORPUS[0]]
    kwargs = {"truncation": truncation, "padding": "do_not_pad", "return_tensors": None}
    ids = ours(texts, **kwargs)["input_ids"]
    assert ids == theirs(texts, **kwargs)["input_ids"]
    for row in ids:
        assert ours.convert_ids_to_tokens(row) == theirs.convert_ids_to_tokens(row)
        assert ours.convert_ids_to_tokens(row, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
            row, skip_special_tokens=True
        )
    assert ours.convert_ids_to_tokens(320) == theirs.convert_ids_to_tokens(320)
    tokens = theirs.convert_ids_to_tokens(ids[0])
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("not-a-token</w>xyz") == theirs.convert_tokens_to_ids("not-a-token</w>xyz")


@pytest.mark.parametrize("layout", ["shipped-eot", "shipped-bang", "hub_legacy-eot"])
def test_decode_round_trip(pairs, layout):
    ours, theirs = pairs[layout]
    for text in CORPUS:
        ids = theirs(text, padding="max_length", truncation=True).input_ids
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
        assert ours.decode(torch.tensor(ids)) == theirs.decode(ids)
    batch = theirs(CORPUS[:6], padding=True).input_ids
    assert ours.batch_decode(batch) == theirs.batch_decode(batch)
    assert ours.batch_decode(torch.tensor(batch), skip_special_tokens=True) == theirs.batch_decode(
        batch, skip_special_tokens=True
    )
    assert ours.decode(ours("a photo of a cat", add_special_tokens=False).input_ids) == "a photo of a cat"


ADDED_PROMPTS = ["a <cat-toy> on a table", "<CAT-TOY> shouting", "sks dog and mytoken", "MyToken <cat-toy><cat-toy>"]


@pytest.mark.parametrize("special", [False, True])
def test_added_tokens_match_transformers(clip_vocab_dir, special):
    for pad in (EOT, "!"):
        ours = CLIPTokenizer.from_pretrained(clip_vocab_dir, pad_token=pad)
        theirs = hf_tokenizer(clip_vocab_dir, pad_token=pad, model_max_length=77)
        new = ["<cat-toy>", "MyToken", "sks"]
        assert ours.add_tokens(new, special_tokens=special) == theirs.add_tokens(new, special_tokens=special)
        # re-adding counts only when the flags change (special -> not special), in both
        assert ours.add_tokens("<cat-toy>") == theirs.add_tokens("<cat-toy>")
        assert ours.add_tokens("<cat-toy>") == theirs.add_tokens("<cat-toy>") == 0
        assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
        assert ours.convert_tokens_to_ids(new) == theirs.convert_tokens_to_ids(new)
        assert ours.added_tokens_encoder == theirs.added_tokens_encoder
        assert ours.get_added_vocab() == theirs.get_added_vocab()
        for text in ADDED_PROMPTS:
            assert_same_encoding(ours, theirs, text, padding="max_length", truncation=True)
            assert ours.tokenize(text) == theirs.tokenize(text)
            ids = theirs(text).input_ids
            assert ours.decode(ids) == theirs.decode(ids)
            assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("pad", [EOT, "!"])
def test_save_pretrained_reloads_identically(clip_vocab_dir, tmp_path, pad):
    ours = CLIPTokenizer.from_shipped_vocab(pad_token=pad)
    ours.add_tokens(["<cat-toy>", "sks"])
    files = ours.save_pretrained(tmp_path / "tok")
    assert sorted(Path(f).name for f in files) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    # the shipped vocabulary is the one the reference builds (open_clip's construction)
    assert json.loads((tmp_path / "tok" / "vocab.json").read_text()) == json.loads(
        (clip_vocab_dir / "vocab.json").read_text()
    )
    assert (tmp_path / "tok" / "merges.txt").read_text() == (clip_vocab_dir / "merges.txt").read_text()
    again = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    theirs = hf_tokenizer(tmp_path / "tok")
    assert again.pad_token == theirs.pad_token == pad and len(again) == len(theirs) == len(ours)
    for text in CORPUS[::3] + ADDED_PROMPTS:
        expected = ours(text, padding="max_length", truncation=True).input_ids
        assert again(text, padding="max_length", truncation=True).input_ids == expected
        assert theirs(text, padding="max_length", truncation=True).input_ids == expected


def test_subfolder_and_overrides(tiny_base):
    base, _ = tiny_base
    tok = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer_2", model_max_length=20)
    assert tok.pad_token == "!" and tok.model_max_length == 20
    assert len(tok("a " * 50, truncation=True).input_ids) == 20
    assert "pad_token='!'" in repr(tok)


def test_copy_and_pickle_keep_added_tokens():
    tok = CLIPTokenizer.from_shipped_vocab(pad_token="!")
    tok.add_tokens(["<x>"])
    expected = tok("a <x> !!", padding="max_length", truncation=True)
    for clone in (copy.deepcopy(tok), pickle.loads(pickle.dumps(tok))):
        assert clone("a <x> !!", padding="max_length", truncation=True).input_ids == expected.input_ids
    assert copy.deepcopy(expected).input_ids == pickle.loads(pickle.dumps(expected)).input_ids == expected.input_ids
    ids = expected.input_ids
    assert tok.decode(ids, clean_up_tokenization_spaces=True) == tok.decode(ids)


def test_long_prompt_warning(caplog):
    tok = CLIPTokenizer.from_shipped_vocab()
    with caplog.at_level("WARNING", logger="sdxl.tokenizer"):
        tok("a " * 100)
        tok("a " * 100)
    assert sum("longer than the specified maximum" in r.message for r in caplog.records) == 1


# ---- errors -------------------------------------------------------------------------------------------------------


def test_missing_folder_and_files(tmp_path, clip_vocab_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No tokenizer files.*from_shipped_vocab"):
        CLIPTokenizer.from_pretrained(tmp_path / "empty")
    only_vocab = tmp_path / "only_vocab"
    only_vocab.mkdir()
    (only_vocab / "vocab.json").write_bytes((clip_vocab_dir / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        CLIPTokenizer.from_pretrained(only_vocab)
    only_merges = tmp_path / "only_merges"
    only_merges.mkdir()
    (only_merges / "merges.txt").write_bytes((clip_vocab_dir / "merges.txt").read_bytes())
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(only_merges)


def _copy_vocab(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_corrupt_files(tmp_path, clip_vocab_dir):
    bad_vocab = _copy_vocab(clip_vocab_dir, tmp_path / "bad_vocab")
    (bad_vocab / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json.*not valid JSON"):
        CLIPTokenizer.from_pretrained(bad_vocab)
    list_vocab = _copy_vocab(clip_vocab_dir, tmp_path / "list_vocab")
    (list_vocab / "vocab.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="vocab.json.*BPE vocabulary"):
        CLIPTokenizer.from_pretrained(list_vocab)
    bad_merges = _copy_vocab(clip_vocab_dir, tmp_path / "bad_merges")
    (bad_merges / "merges.txt").write_text("#version: 0.2\ni n\nthree tokens here\n")
    with pytest.raises(ValueError, match="merges.txt.*line 3"):
        CLIPTokenizer.from_pretrained(bad_merges)
    unknown_merge = _copy_vocab(clip_vocab_dir, tmp_path / "unknown_merge")
    (unknown_merge / "merges.txt").write_text("#version: 0.2\nzzzz qqqq\n")
    with pytest.raises(ValueError, match="Invalid CLIP BPE vocabulary/merges"):
        CLIPTokenizer.from_pretrained(unknown_merge)
    binary_merges = _copy_vocab(clip_vocab_dir, tmp_path / "binary_merges")
    (binary_merges / "merges.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="merges.txt.*UTF-8"):
        CLIPTokenizer.from_pretrained(binary_merges)
    bad_config = _copy_vocab(clip_vocab_dir, tmp_path / "bad_config")
    (bad_config / "tokenizer_config.json").write_text("]")
    with pytest.raises(ValueError, match="tokenizer_config.json.*not valid JSON"):
        CLIPTokenizer.from_pretrained(bad_config)
    bad_decoder = _copy_vocab(clip_vocab_dir, tmp_path / "bad_decoder")
    (bad_decoder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x": {"content": "a"}}}))
    with pytest.raises(ValueError, match="tokenizer_config.json.*added_tokens_decoder"):
        CLIPTokenizer.from_pretrained(bad_decoder)
    list_decoder = _copy_vocab(clip_vocab_dir, tmp_path / "list_decoder")
    (list_decoder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": [1]}))
    with pytest.raises(ValueError, match="added_tokens_decoder must map"):
        CLIPTokenizer.from_pretrained(list_decoder)
    bad_special = _copy_vocab(clip_vocab_dir, tmp_path / "bad_special")
    (bad_special / "tokenizer_config.json").write_text(json.dumps({"pad_token": 5}))
    with pytest.raises(ValueError, match="special token must be a string"):
        CLIPTokenizer.from_pretrained(bad_special)
    wrong_id = _copy_vocab(clip_vocab_dir, tmp_path / "wrong_id")
    decoder = {"49500": {"content": "<new>", "special": False}}
    (wrong_id / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    with pytest.raises(ValueError, match="'<new>' has id 49500.*would get 49408"):
        CLIPTokenizer.from_pretrained(wrong_id)


def test_corrupt_tokenizer_json(tmp_path, tiny_base):
    base, _ = tiny_base
    data = json.loads((base / "tokenizer" / "tokenizer.json").read_text())
    wordpiece = tmp_path / "wordpiece"
    wordpiece.mkdir()
    (wordpiece / "tokenizer.json").write_text(json.dumps({**data, "model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="tokenizer.json.*not hold a BPE model.*WordPiece"):
        CLIPTokenizer.from_pretrained(wordpiece)
    bad_merge = tmp_path / "bad_merge"
    bad_merge.mkdir()
    (bad_merge / "tokenizer.json").write_text(json.dumps({**data, "model": {**data["model"], "merges": [["a"]]}}))
    with pytest.raises(ValueError, match="tokenizer.json.*bad merge entry"):
        CLIPTokenizer.from_pretrained(bad_merge)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "tokenizer.json").write_text((base / "tokenizer" / "tokenizer.json").read_text()[:1000])
    with pytest.raises(ValueError, match="tokenizer.json.*not valid JSON"):
        CLIPTokenizer.from_pretrained(truncated)


@pytest.mark.parametrize("config", [None, "legacy", "hub"])
def test_legacy_added_tokens_json(tmp_path, clip_vocab_dir, config):
    """transformers 4.2x/4.3x wrote added_tokens.json; it counts only when tokenizer_config has no decoder."""
    if config is None:
        folder = _copy_vocab(clip_vocab_dir, tmp_path / "legacy")
    else:
        folder = write_hub_layout(tmp_path / "legacy", clip_vocab_dir, "!", legacy=config == "legacy")
    (folder / "added_tokens.json").write_text(json.dumps({"<|startoftext|>": 49406, EOT: 49407, "<extra>": 49408}))
    ours, theirs = CLIPTokenizer.from_pretrained(folder), hf_tokenizer(folder, model_max_length=77)
    assert len(ours) == len(theirs) == (49408 if config == "hub" else 49409)
    for text in ("an <extra> token", "<EXTRA> <|ENDOFTEXT|> <|STARTOFTEXT|>", CORPUS[5], CORPUS[15]):
        assert_same_encoding(ours, theirs, text, padding="max_length", truncation=True)


def test_call_errors():
    tok = CLIPTokenizer.from_shipped_vocab()
    with pytest.raises(ValueError, match="padding='left'"):
        tok("a", padding="left")
    with pytest.raises(ValueError, match="truncation='only_first'"):
        tok("a", truncation="only_first")
    with pytest.raises(ValueError, match="return_tensors='tf'"):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError, match="different lengths.*padding"):
        tok(["a", "a b c"], return_tensors="pt")
    with pytest.raises(TypeError, match="list of str.*int"):
        tok(["a", 3])
    with pytest.raises(TypeError, match="NoneType"):
        tok(None)
    with pytest.raises(ValueError, match="max_length=1 leaves no room"):
        tok("a b", max_length=1)
    with pytest.raises(ValueError, match="max_length must be"):
        tok("a b", max_length=-3)
    with pytest.raises(TypeError, match="add_tokens takes str"):
        tok.add_tokens([5])
    assert tok.add_tokens([]) == 0
    with pytest.raises(AttributeError, match="no field 'token_type_ids'"):
        _ = tok("a").token_type_ids
