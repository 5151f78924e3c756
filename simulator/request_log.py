"""The request log: one entry per model-endpoint request, rejected ones included.

Tests read it (``GET /_sim/log``) to prove what reached the provider: how often a
step was called (by its ``x-celeriac-step`` header), which status each call got.
API keys are never part of an entry.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

# Enough for a long benchmark; older entries fall off rather than eat memory.
MAX_ENTRIES = 200_000


@dataclass
class LogEntry:
    ts: float  # unix time the request arrived
    endpoint: str  # "anthropic" | "openai"
    path: str
    request_id: str
    step: str | None  # the x-celeriac-step header, the caller's idempotency id
    model: str | None = None
    status: int | None = None  # None when the "timeout" fault hung up without answering
    input_tokens: int = 0
    output_tokens: int = 0
    fault: str | None = None  # "forced" | "random" | "rpm" when the error was injected
    # The x-celeriac-slot header: when the caller's rate limiter granted this call
    # (unix time), so arrival - slot is the grant -> arrival lag.
    slot: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """Lives on the server's event loop; the JSON-lines file is opened on first use
    and written line by line, so ``tail -f`` shows requests as they finish."""

    def __init__(self, path: str | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=max_entries)
        self._path = Path(path) if path else None
        self._file: IO[str] | None = None

    def append(self, entry: LogEntry) -> None:
        self._entries.append(entry)
        if self._path is None:
            return
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(entry.to_dict()) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in self._entries]

    def clear(self) -> None:
        """Clears the in-memory log; the file, a record of the whole run, is kept."""
        self._entries.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
