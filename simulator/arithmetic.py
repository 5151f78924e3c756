"""Finding arithmetic expressions in a user's text, so the script can call a calculator.

A tiny recursive-descent parser over numbers, ``+ - * / % **`` and parentheses, run
from each token: the longest well-formed span with at least one binary operator is an
expression. A parser rather than one regular expression, so that "(what is 2+2)"
yields "2+2" and "2+2 and (3+4)*5" yields two expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d+)?)|(?P<op>\*\*|[-+*/%])|(?P<lp>\()|(?P<rp>\))|(?P<other>\S)"
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "num" | "op" | "lp" | "rp" | "other"
    text: str
    start: int
    end: int


# (index after the parsed span, number of binary operators in it), or None.
_Parsed = tuple[int, int] | None


def find_expressions(text: str) -> list[str]:
    tokens = [
        _Token(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)
    ]
    found: list[str] = []
    i = 0
    while i < len(tokens):
        parsed = _expression(tokens, i) if _may_start(text, tokens[i]) else None
        if parsed is not None and parsed[1] > 0:
            end = parsed[0]
            found.append(text[tokens[i].start : tokens[end - 1].end])
            i = end
        else:
            i += 1
    return found


def _may_start(text: str, token: _Token) -> bool:
    if token.kind in ("num", "lp"):
        return True
    # A sign starts an expression only when it stands apart ("is -3 + 5"), not
    # inside a word such as "GPT-4".
    before = text[token.start - 1] if token.start > 0 else " "
    return token.text in ("-", "+") and (before.isspace() or before == "(")


def _expression(tokens: list[_Token], i: int) -> _Parsed:
    parsed = _unary(tokens, i)
    if parsed is None:
        return None
    end, ops = parsed
    while end < len(tokens) and tokens[end].kind == "op":
        right = _unary(tokens, end + 1)
        if right is None:
            break
        end, ops = right[0], ops + right[1] + 1
    return end, ops


def _unary(tokens: list[_Token], i: int) -> _Parsed:
    if i < len(tokens) and tokens[i].kind == "op" and tokens[i].text in ("-", "+"):
        return _primary(tokens, i + 1)
    return _primary(tokens, i)


def _primary(tokens: list[_Token], i: int) -> _Parsed:
    if i >= len(tokens):
        return None
    if tokens[i].kind == "num":
        return i + 1, 0
    if tokens[i].kind == "lp":
        inner = _expression(tokens, i + 1)
        if inner is not None and inner[0] < len(tokens) and tokens[inner[0]].kind == "rp":
            return inner[0] + 1, inner[1]
    return None
