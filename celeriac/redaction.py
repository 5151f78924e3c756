"""Secrets out of outside text: one ``Redactor``, built once per process from every
secret the server holds (``Settings.secret_values()``), used wherever text from
outside enters (provider answers and errors, tool and MCP results), where the store
is written, where documents leave (status, events, webhooks) and in the logs.

It replaces exact occurrences of each secret, and of the forms a secret takes in
other text (percent-encoded as in a URL, escaped as in a JSON string), with
``[REDACTED]``; and anything shaped like a provider key (``sk-...``), configured or
not. Strings shorter than ``MIN_SECRET_CHARS`` are ignored: replacing every "abc" of
every answer would mangle text and hide nothing worth hiding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6
# Provider-shaped keys (sk-..., sk-ant-..., sk-proj-...) even when not configured here;
# not inside a word, so "task-12345678" or "disk-partition" stay as they are.
KEY_PATTERN = r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"

T = TypeVar("T")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        forms: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_CHARS:
                continue
            forms.update((secret, quote(secret, safe=""), quote_plus(secret),
                          json.dumps(secret)[1:-1]))
        # Longest first: a secret that contains another is replaced whole.
        literals = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join([*map(re.escape, literals), KEY_PATTERN]))

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        return self._pattern.sub(REDACTED, value)

    def value(self, value: T) -> T:
        """A JSON-like value (str, dict, list, tuple, scalars) with every string in it,
        keys included, redacted; the same object when there was nothing to replace.
        Walking the value, not its serialized text, keeps JSON escaping intact."""
        return self._value(value)  # type: ignore[no-any-return]

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(REDACTED, value)
        if isinstance(value, dict):
            items = [(self._value(k), self._value(v)) for k, v in value.items()]
            if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(),
                                                                    strict=True)):
                return value
            return dict(items)
        if isinstance(value, list | tuple):
            scrubbed = [self._value(v) for v in value]
            if all(a is b for a, b in zip(scrubbed, value, strict=True)):
                return value
            return tuple(scrubbed) if isinstance(value, tuple) else scrubbed
        return value


# Provider-shaped keys only: for code run without Settings (tests, tools, scripts).
KEY_SHAPES = Redactor()
