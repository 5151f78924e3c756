"""Secrets out of outside text: one ``Redactor``, built once per process from every
secret the server holds (``Settings.secret_values()``), used wherever text from
outside enters (provider answers and errors, tool and MCP results), where the store
is written, where documents leave (status, events, webhooks) and in the logs.

It replaces exact occurrences of each secret, and of the forms a secret takes in
other text (percent-encoded as in a URL, escaped as in a JSON string), with
``[REDACTED]``. Strings shorter than ``MIN_SECRET_CHARS`` are ignored: replacing
every "abc" of every answer would mangle text and hide nothing worth hiding.

Logs also lose anything shaped like a provider key (``sk-...``), configured here or
not (``with_key_shapes()``). Data does not: a tenant's own text that mentions such a
string is theirs, stored and answered as they wrote it; what the server must never
hand out is what it holds.
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
    def __init__(self, secrets: Iterable[str] = (), *, key_shapes: bool = False):
        self._secrets = tuple(s for s in secrets if s and len(s) >= MIN_SECRET_CHARS)
        forms: set[str] = set()
        for secret in self._secrets:
            forms.update((secret, quote(secret, safe=""), quote_plus(secret),
                          json.dumps(secret)[1:-1]))
        # Longest first: a secret that contains another is replaced whole.
        alternatives = [*map(re.escape, sorted(forms, key=len, reverse=True))]
        if key_shapes:
            alternatives.append(KEY_PATTERN)
        # None: nothing to look for (no secret configured), so nothing is scanned.
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def with_key_shapes(self) -> Redactor:
        """The same secrets, plus anything shaped like a provider key: for logs."""
        return Redactor(self._secrets, key_shapes=True)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        return value if self._pattern is None else self._pattern.sub(REDACTED, value)

    def value(self, value: T) -> T:
        """A JSON-like value (str, dict, list, tuple, scalars) with every string in it,
        keys included, redacted; the same object when there was nothing to replace.
        Walking the value, not its serialized text, keeps JSON escaping intact."""
        return self._value(value)  # type: ignore[no-any-return]

    def _value(self, value: Any) -> Any:
        if self._pattern is None:
            return value
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


# For code run without Settings (tests, tools, scripts): no secret to hide in data,
# and provider-shaped keys in logs.
NO_SECRETS = Redactor()
KEY_SHAPES = Redactor(key_shapes=True)
