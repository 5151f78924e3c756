"""Deterministic token estimates: about four characters a token, as a rule of thumb.

Counts are taken from the wire-neutral conversation, so the same conversation costs
the same in both wire formats, and ``count_tokens`` agrees with ``usage``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from simulator.conversation import Conversation, ToolCall, canonical_json

CHARS_PER_TOKEN = 4


def estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def input_tokens(conversation: Conversation) -> int:
    return max(1, estimate(conversation.canonical()))


def output_tokens(text: str, calls: Sequence[ToolCall]) -> int:
    if calls:
        return max(1, estimate(canonical_json([[c.name, c.input] for c in calls])))
    return max(1, estimate(text))


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``max_tokens``; the flag says whether anything was cut."""
    if max_tokens is None or estimate(text) <= max_tokens:
        return text, False
    return text[: max(0, max_tokens) * CHARS_PER_TOKEN], True
