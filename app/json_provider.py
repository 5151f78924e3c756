"""Every answer is JSON as the standard defines it.

Flask's default provider writes ``NaN`` and ``Infinity`` for non-finite floats, which
no strict parser reads. Requests can no longer store them (celeriac.strict_json), but
a store written before that may hold some: such a value is served as ``null``, and the
rest of the answer as it is, rather than an answer no client can parse.
"""

from __future__ import annotations

import math
from typing import Any

from flask.json.provider import DefaultJSONProvider


class StrictJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        try:
            return super().dumps(obj, **kwargs)
        except ValueError:  # "Out of range float values are not JSON compliant"
            return super().dumps(_finite(obj), **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
