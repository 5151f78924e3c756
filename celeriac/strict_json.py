"""JSON as the standard defines it, not as Python's ``json`` accepts it.

``json.loads`` takes ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON), turns
``1e400`` into ``inf``, parses integers of any size (and raises a bare ValueError
past 4,300 digits), nests as deep as the interpreter's stack allows, and hands back
strings with NUL characters or lone UTF-16 surrogates. Stored, each of those breaks
something later: PostgreSQL refuses NUL in text, SQLite keeps ``NaN`` and the
answer that serves it back is no longer JSON, a deep document overflows the stack
of whatever walks it next. :func:`loads` refuses them all, and says where.

The same rules hold for every number: a finite IEEE 754 double (RFC 7493, I-JSON),
so an integer beyond ~1.8e308 is refused like ``1e400``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from celeriac.errors import InvalidRequest

MAX_DEPTH = 32  # objects and arrays, the outermost counting as 1
# An integer with more digits than this cannot be a finite double (max ~1.8e308);
# refusing by length first means int() never meets the 4,300-digit limit.
_MAX_INT_DIGITS = 310
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class JSONRejected(InvalidRequest):
    """Input that is not (storable) JSON. ``malformed``: not JSON at all (400);
    otherwise JSON whose values we refuse (422). ``field`` is the dotted path to the
    culprit, when known ("metadata.tags.0")."""

    def __init__(self, message: str, *, field: str | None = None, malformed: bool):
        super().__init__(message, field=field,
                         code="malformed_json" if malformed else "validation_error")
        self.malformed = malformed


class _Refused:
    """What a number the parser met becomes, until the walk finds where it was."""

    def __init__(self, text: str, why: str, *, malformed: bool):
        self.text = text[:40] + ("..." if len(text) > 40 else "")
        self.why = why
        self.malformed = malformed


def _constant(text: str) -> _Refused:
    return _Refused(text, "is not JSON (NaN and Infinity are not numbers in JSON)",
                    malformed=True)


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(text, "is out of range: numbers must fit a double", malformed=False)


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) <= _MAX_INT_DIGITS:
        value = int(text)
        if abs(value) <= sys.float_info.max:
            return value
    return _Refused(text, "is out of range: numbers must fit a double", malformed=False)


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` strictly; :class:`JSONRejected` for anything refused."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise JSONRejected(f"JSON nested deeper than {max_depth} levels",
                           malformed=True) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise JSONRejected(f"malformed JSON: {exc}", malformed=True) from None
    check(value, max_depth=max_depth)
    return value


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed document that could not be stored and served back as JSON.
    Iterative, so that the walk itself cannot overflow the stack."""
    pending: list[tuple[Any, tuple[str, ...], int]] = [(value, (), 0)]
    while pending:
        item, path, depth = pending.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                raise JSONRejected(f"JSON nested deeper than {max_depth} levels",
                                   field=_dotted(path), malformed=True)
            if isinstance(item, dict):
                for key, child in item.items():
                    if _UNSTORABLE.search(key):
                        raise JSONRejected(
                            f"{_named(path)}a key contains a NUL character or a lone "
                            "surrogate", field=_dotted(path), malformed=False)
                    pending.append((child, (*path, key), depth))
            else:
                pending.extend((child, (*path, str(i)), depth) for i, child in enumerate(item))
        elif isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise JSONRejected(
                    f"{_named(path)}contains a NUL character or a lone surrogate",
                    field=_dotted(path), malformed=False)
        elif isinstance(item, _Refused):
            raise JSONRejected(f"{_named(path)}{item.text} {item.why}", field=_dotted(path),
                               malformed=item.malformed)
        elif isinstance(item, float) and not math.isfinite(item):
            raise JSONRejected(f"{_named(path)}{item} is not a JSON number",
                               field=_dotted(path), malformed=False)


def _dotted(path: tuple[str, ...]) -> str | None:
    return ".".join(path) or None


def _named(path: tuple[str, ...]) -> str:
    return f"{'.'.join(path)}: " if path else ""
