"""Prompt-weighting parsers: compel's syntax against compel's own parser, A1111's against a hand-written table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdxl.prompts.weighting import parse_a1111, parse_compel, parse_plain, parser_for

LION = "Colorful Roaring Lion sitting on a (victorian)1.2 couch, (flat icon)+, vector+"
ANIME = (
    "(Anime Portrait)1.2 of a young woman, pretty+ stunning+ blue eyes, soft face, long pink hair, bow hairclip, pink "
    "school uniform, high quality, hq, 4k, 8k, award-winning, happy white cat in her arms, dawn+, close-up+, (cherry "
    "blossoms)---, (wearing golden blossom earrings)+, (bokeh effect)-, cute, lake with (white cranes)++ in the "
    "background, butterflies--, reflections--"
)
ANIME_NEGATIVE = (
    "Bad quality, artifacts, low quality, lowres, deformed+, malformed+, extra hands, extra limbs, bad eyes, ugly, "
    "lowres, washed out, poor quality"
)

# prompts in compel's syntax: weights, nesting, escapes, unbalanced brackets, empty, and the seed's prompts
COMPEL_CORPUS = [
    LION, ANIME, ANIME_NEGATIVE,
    "a cat", "a cat+", "a (red cat)1.2 on a mat", "a cat++ dog--", "(a (red)+ cat)-", "a \\(literal\\) cat", "",
    "   ", "a,b", "a, (b)0.5, c", "(a)", "((a))", "a (b c)", "cat+ dog", "cat+dog", "a + b", "a - b", "well-known",
    "1.5 cats", "(cat)1.5", "(cat) 1.5", "cat.attend(1.3)", "(cat)-0.5", "(cat)+++", "(cat", "cat)",
    'a "quoted thing"+ b', "x (y)0 z", "a (b)2 c (d)0.5", "cat 1.2", "((a)1.5 b)2", "a.b", "end.", "Hello!", "a-",
    "-a", "+a", "a+b+", "(a,b)1.1", "\\+ a", '"a \\"b\\" c"+', '"a, b"', '"" x', '"  "+ x', "(a + b)",
    "(x (a + b))1.2", "(a)b", "a(b)", "cat+,", "(cat)1.2.3", "(cat).5", '"a (b"', 'a "b', "(a)(b)1.5", "a\\\\b",
    "(cat)1e3", "cat\\+", "(cat).attend(0.5) dog", '"cat".attend(+++)', "cat .attend(1.2)", "(a, (b)1.5, c)0.8",
    "(a. b)+", "cat--- dog+++ bird-", "((((deep))))1.1", "(a)0", "(x)2.", "a--b--", "x=y", "(x=y)1.2",
    'a \\"quoted\\" word', "(\\(a\\))1.3", "a) (b", "()", "1.2\\\\(1.2(1.2", "\\\\) ", "a\tb\n(c)-",
]

# (prompt, expected) with AUTOMATIC1111's parse_prompt_attention semantics, worked out by hand
A = 1.1
S = 1 / 1.1
A1111_TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", A), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", A)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", A)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [("a ", 1.0), ("house", 1.3 * A * A), (" ", A), ("on", 1.0), (" a ", A), ("hill", 0.5 * A),
         (", sun, ", A), ("sky", A**4), (".", A)],
    ),
    ("", [("", 1.0)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("((a))", [("a", A * A)]),
    ("[a]", [("a", S)]),
    ("[[a]]", [("a", S * S)]),
    ("([a])", [("a", 1.0)]),
    ("(a:0.5) b", [("a", 0.5), (" b", 1.0)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("a )b", [("a )b", 1.0)]),  # stray closers are text
    ("a ]b", [("a ]b", 1.0)]),
    ("[unclosed", [("unclosed", S)]),  # unclosed openers weight the rest
    ("(a [b)", [("a ", A), ("b", 1.0)]),
    ("x (a:2) (b:0.5)", [("x ", 1.0), ("a", 2.0), (" ", 1.0), ("b", 0.5)]),
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped
    ("\\[x\\]", [("[x]", 1.0)]),
    ("a: b", [("a: b", 1.0)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:+2)", [("a", 2.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("cat (dog:1.2", [("cat ", 1.0), ("dog:1.2", A)]),
    ("((a:1.5))", [("a", 1.5 * A)]),
    ("(a (b:2) c)", [("a ", A), ("b", 2.0 * A), (" c", A)]),
    ("[a (b) c]", [("a ", S), ("b", 1.0), (" c", S)]),
    ("x\\(y:1.5\\)", [("x(y:1.5)", 1.0)]),
    ("(a)(b)(c)", [("abc", A)]),
    ("a, (b, c:1.3), d", [("a, ", 1.0), ("b, c", 1.3), (", d", 1.0)]),
    ("()", [("", 1.0)]),
    ("[]", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    (" ( spaced ) ", [(" ", 1.0), (" spaced ", A), (" ", 1.0)]),
    ("a(b)c", [("a", 1.0), ("b", A), ("c", 1.0)]),
    ("(a:1.2:1.3)", [("a:1.2", 1.3)]),
    ("word+ (compel)1.2", [("word+ ", 1.0), ("compel", A), ("1.2", 1.0)]),
    ("BREAK here", [("BREAK here", 1.0)]),  # BREAK is not special in sdxl
    ("]", [("]", 1.0)]),
    (")", [(")", 1.0)]),
    ("(((x)))", [("x", A**3)]),
    ("(a:1.2.3)", [("a:1.2.3)", A)]),  # A1111 raises on float("1.2.3"); sdxl keeps it as text
]


def compel_reference(prompt: str) -> list[tuple[str, float]]:
    from compel.prompt_parser import PromptParser

    conjunction = PromptParser().parse_conjunction(prompt)
    if not conjunction.prompts:  # e.g. "()": compel has no fragment at all (and then fails to encode); we use ""
        return [("", 1.0)]
    assert len(conjunction.prompts) == 1 and conjunction.weights == [1.0]
    return [(f.text, f.weight) for f in conjunction.prompts[0].children]


@pytest.mark.parametrize("prompt", COMPEL_CORPUS)
def test_compel_syntax_matches_compel_parser(prompt):
    assert parse_compel(prompt) == compel_reference(prompt)


def test_corpus_sizes():
    assert len(COMPEL_CORPUS) >= 40 and len(A1111_TABLE) >= 40
    assert any(w != 1.0 for p in COMPEL_CORPUS for _, w in parse_compel(p))


@pytest.mark.parametrize(("prompt", "expected"), A1111_TABLE, ids=[repr(p) for p, _ in A1111_TABLE])
def test_a1111_syntax_table(prompt, expected):
    got = parse_a1111(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


_SYNTAX_CHARS = st.sampled_from(list("()[]:+-.,\"\\=1 ") + ["cat", "1.2", ")1.5", ".attend(", ":0.5)", "\t"])
_FUZZ = st.lists(st.one_of(_SYNTAX_CHARS, st.text(max_size=3)), max_size=14).map("".join)


@settings(max_examples=300, deadline=None)
@given(_FUZZ)
def test_any_string_parses(prompt):
    for parse in (parse_compel, parse_a1111):
        fragments = parse(prompt)
        assert fragments and all(isinstance(t, str) and isinstance(w, float) for t, w in fragments)


_PLAIN = st.text(alphabet=st.characters(blacklist_characters='()[]:+-.,"\\=', blacklist_categories=("Cs",)))


@settings(max_examples=200, deadline=None)
@given(_PLAIN)
def test_text_without_syntax_has_weight_one(prompt):
    for parse in (parse_compel, parse_a1111):
        assert all(w == 1.0 for _, w in parse(prompt))
    assert parse_a1111(prompt) == [(prompt, 1.0)]


@settings(max_examples=200, deadline=None)
@given(_FUZZ)
def test_compel_parser_agrees_on_fuzzed_prompts(prompt):
    import pyparsing
    from compel.prompt_parser import PromptParser

    try:
        expected = compel_reference(prompt)
    except (pyparsing.ParseException, PromptParser.ParsingException):  # compel rejects e.g. "\x0b": not compared
        return
    assert parse_compel(prompt) == expected


def test_parser_for():
    assert parser_for("compel") is parse_compel
    assert parser_for("a1111") is parse_a1111
    assert parser_for(None) is parse_plain
    assert parse_plain("(a)1.2") == [("(a)1.2", 1.0)]


def test_unknown_syntax_is_a_value_error():
    with pytest.raises(ValueError, match="prompt_syntax='comfy'.*compel.*a1111"):
        parser_for("comfy")


@pytest.mark.parametrize("parse", [parse_compel, parse_a1111])
def test_non_string_is_a_type_error(parse):
    with pytest.raises(TypeError, match="prompt must be a str.*list"):
        parse(["a cat"])
