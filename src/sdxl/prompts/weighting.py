"""Prompt-weighting parsers: compel's syntax and AUTOMATIC1111's, both to a list of (text, weight) fragments.

compel (2.5, `compel.prompt_parser`, the grammar built by `build_parser_syntax`):
    `word+` / `word--`       weight 1.1**n / 0.9**n on the word just before (no space before the signs)
    `(several words)1.2`     explicit weight on a parenthesised or "quoted" group (no space before the number)
    `(words)+` / `(words)-`  1.1**n / 0.9**n on a group; `target.attend(1.2)` is the long form
    nesting multiplies; `\\(` `\\)` `\\"` are literal; unbalanced brackets stay literal text
    adjacent fragments of equal weight are joined with one space; "," is followed by a space first.
  Not supported (kept as plain text): `.blend()`, `.and()`, `.swap()`, `withLora()`/`useLora()`.

AUTOMATIC1111 (`modules/prompt_parser.py` parse_prompt_attention):
    `(word)` 1.1, `[word]` 1/1.1, `(word:1.5)` explicit, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` literal,
    an unclosed `(`/`[` weights the rest of the prompt, a stray `)`/`]` or `:1.2)` is literal text,
    adjacent fragments of equal weight are concatenated as they are. `BREAK` is not special here.

Both return at least one fragment: an empty prompt is `[("", 1.0)]`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

Fragments = list[tuple[str, float]]

SYNTAXES = ("compel", "a1111")

# ---- compel -------------------------------------------------------------------------------------------------------

_SYNTACTIC = '()",.+-='
_ESCAPED = tuple("\\" + c for c in _SYNTACTIC)
_SKIP = " \t\n\r\x0b\x0c"  # pyparsing skips " \t\n\r"; compel raises on \x0b/\x0c, we treat them as spaces
_NOT_WORD = string.whitespace + _SYNTACTIC
_REAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")  # pyparsing_common.real
_INT = re.compile(r"-?\d+")
_QUOTED = re.compile(r'"((?:\\"|[^"\n\r])*)"')
_WS_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\f": "\f", "\\r": "\r"}

# a parse node: ("text", str) or ("attention", weight, [nodes])
Node = tuple


def _unescape(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")").replace('\\"', '"')


class _CompelParser:
    """Recursive descent over compel's weighting grammar. Each `_x(i)` returns (nodes, end) or None."""

    def __init__(self, text: str, plus: float = 1.1, minus: float = 0.9):
        self.s, self.plus, self.minus = text, plus, minus

    def _ws(self, i: int) -> int:
        while i < len(self.s) and self.s[i] in _SKIP:
            i += 1
        return i

    def _plain_sign(self, j: int) -> bool:
        """A + or - that is part of a word: followed by a character that is neither space nor syntax."""
        s = self.s
        return s[j] in "+-" and j + 1 < len(s) and s[j + 1] not in " \t\r\n" + _SYNTACTIC

    def _word(self, i: int) -> tuple[list[Node], int] | None:
        """A run without syntax: escaped symbols, +/- followed by a plain character, other non-syntax characters."""
        s, j = self.s, i
        while j < len(s):
            if s.startswith(_ESCAPED, j):
                j += 2
            elif s[j] not in _NOT_WORD or self._plain_sign(j):
                j += 1
            else:
                break
        return ([("text", _unescape(s[i:j]))], j) if j > i else None

    def _weight(self, i: int) -> tuple[float, int] | None:
        """`+++` -> 1.1**3, `--` -> 0.9**2, or a number (pyparsing's real, then int)."""
        s = self.s
        for sign, base in (("+", self.plus), ("-", self.minus)):
            if s.startswith(sign, i):
                j = i
                while j < len(s) and s[j] == sign:
                    j += 1
                return pow(base, j - i), j
        m = _REAL.match(s, i) or _INT.match(s, i)
        return (float(m.group()), m.end()) if m else None

    def _quoted(self, i: int) -> tuple[list[Node], int] | None:
        m = _QUOTED.match(self.s, i)
        if not m:
            return None
        content = m.group(1).replace('\\"', '"')
        for escape, char in _WS_ESCAPES.items():
            content = content.replace(escape, char)
        if not content.strip():
            return [("text", "")], m.end()
        inner = _CompelParser(content.replace('"', '\\"').expandtabs(), self.plus, self.minus)
        nodes, end = inner._sequence(0, commas=True)
        if inner._ws(end) != len(inner.s):
            return None
        return nodes, m.end()

    def _parenthesized(self, i: int) -> tuple[list[Node], int] | None:
        if not self.s.startswith("(", i):
            return None
        nodes, j = self._sequence(i + 1, commas=True)
        j = self._ws(j)
        return (nodes, j + 1) if self.s.startswith(")", j) else None

    def _attention(self, i: int) -> tuple[list[Node], int] | None:
        # explicit: target.attend(weight), whitespace allowed between the parts
        for target in (self._quoted, self._parenthesized, self._word):
            got = target(i)
            if got is None:
                continue
            j = self._ws(got[1])
            if self.s.startswith(".attend", j):
                j = self._ws(j + len(".attend"))
                if self.s.startswith("(", j):
                    weight = self._weight(self._ws(j + 1))
                    if weight is not None:
                        k = self._ws(weight[1])
                        if self.s.startswith(")", k):
                            return [("attention", weight[0], got[0])], k + 1
            break
        # implicit: (group)1.2, "group"-, word++ (no whitespace before the weight)
        group = self._quoted(i) or self._parenthesized(i)
        if group is not None:
            weight = self._weight(group[1])
            if weight is not None:
                return [("attention", weight[0], group[0])], weight[1]
        word = self._word(i)
        if word is not None and self.s.startswith(("+", "-"), word[1]):
            weight = self._weight(word[1])
            return [("attention", weight[0], word[0])], weight[1]
        return None

    def _sequence(self, i: int, commas: bool) -> tuple[list[Node], int]:
        """Inside brackets/quotes (`commas`): attention, groups, words, "," and "."; stops before anything else."""
        nodes: list[Node] = []
        while True:
            j = self._ws(i)
            got = self._attention(j) or self._parenthesized(j) or self._quoted(j) or self._word(j)
            if got is None and commas and self.s.startswith((",", "."), j):
                got = [("text", self.s[j])], j + 1
            if got is None:
                return nodes, i
            nodes.extend(got[0])
            i = got[1]

    def top_level(self) -> list[Node]:
        """The whole prompt: attention, quoted and parenthesised groups, else any run of non-space characters."""
        nodes: list[Node] = []
        i = self._ws(0)
        while i < len(self.s):
            got = self._attention(i) or self._quoted(i) or self._parenthesized(i)
            if got is None:
                j = i
                while j < len(self.s) and self.s[j] not in string.whitespace:
                    j += 1
                got = [("text", _unescape(self.s[i:j]))], j
            nodes.extend(got[0])
            i = self._ws(got[1])
        return nodes


def _flatten(nodes: list[Node], scale: float, out: Fragments) -> None:
    for node in nodes:
        if node[0] == "text":
            # compel re-creates its Fragment here, which un-escapes the text once more
            out.append((_unescape(node[1]), 1.0 * scale))
        else:
            _flatten(node[2], scale * node[1], out)


def _fuse(fragments: Fragments, joiner: str, unescape: Callable[[str], str] = str) -> Fragments:
    fused: Fragments = []
    for text, weight in fragments:
        if fused and fused[-1][1] == weight:
            fused[-1] = (unescape(fused[-1][0] + joiner + text), weight)
        else:
            fused.append((text, weight))
    return fused


def parse_compel(prompt: str) -> Fragments:
    """compel's weighting syntax -> [(text, weight), ...] as `compel.prompt_parser.PromptParser` flattens it."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    prompt = re.sub(r",(\S)", r", \1", prompt)  # compel puts a space after every comma
    if not prompt.strip():
        return [("", 1.0)]
    out: Fragments = []
    _flatten(_CompelParser(prompt.expandtabs()).top_level(), 1.0, out)
    return _fuse(out, " ", _unescape) or [("", 1.0)]


# ---- AUTOMATIC1111 ------------------------------------------------------------------------------------------------

_A1111 = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\     # escapes (a lone backslash is dropped)
    | \( | \[
    | :\s*([+-]?[.\d]+)\s*\)                 # explicit weight closing a round bracket
    | \) | \]
    | [^\\()\[\]:]+                          # plain text
    | :
    """,
    re.VERBOSE,
)


def parse_a1111(prompt: str) -> Fragments:
    """AUTOMATIC1111's attention syntax -> [(text, weight), ...] with parse_prompt_attention's semantics."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _A1111.finditer(prompt):
        text, weight = m.group(0), m.group(1)
        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_open.append(len(res))
        elif text == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # e.g. "1.2.3": A1111 raises here; keep the text instead
                res.append([text, 1.0])
                continue
            scale(round_open.pop(), factor)
        elif text == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif text == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            res.append([text, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    fused = _fuse([(t, w) for t, w in res], "")
    return fused or [("", 1.0)]


def parse_plain(prompt: str) -> Fragments:
    """No syntax: the whole prompt at weight 1."""
    return [(prompt, 1.0)]


def parser_for(syntax: str | None) -> Callable[[str], Fragments]:
    """The parser of `syntax`: "compel", "a1111", or None (plain text)."""
    if syntax is None:
        return parse_plain
    if syntax == "compel":
        return parse_compel
    if syntax == "a1111":
        return parse_a1111
    raise ValueError(f"prompt_syntax={syntax!r} is not supported; use one of {list(SYNTAXES)} or None (plain text).")
