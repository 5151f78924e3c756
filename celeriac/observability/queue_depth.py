"""Queue depth and the age of the oldest waiting message, read straight from a Redis
broker (Flower has no queue length: mher/flower#1173). With Redis, a Celery queue
is a list: messages are pushed on the left and taken from the right, so the oldest
is at index -1. Its ``sent_at`` header is set by whoever enqueued it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from opentelemetry.propagate import inject
from redis import Redis

from celeriac.execution.priority import QUEUES

SENT_AT_HEADER = "sent_at"


@dataclass(frozen=True)
class QueueStat:
    name: str
    depth: int
    oldest_age_s: float | None


def queue_stats(broker: Redis, queues: tuple[str, ...] = QUEUES) -> list[QueueStat]:
    pipe = broker.pipeline(transaction=False)
    for name in queues:
        pipe.llen(name)
        pipe.lindex(name, -1)
    results = pipe.execute()
    now = time.time()
    stats = []
    for i, name in enumerate(queues):
        depth, oldest = int(results[2 * i]), results[2 * i + 1]
        stats.append(QueueStat(name, depth, _age(oldest, now)))
    return stats


def _age(raw: bytes | str | None, now: float) -> float | None:
    if raw is None:
        return None
    try:
        sent = json.loads(raw).get("headers", {}).get(SENT_AT_HEADER)
        return max(0.0, now - float(sent)) if sent is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def message_headers() -> dict[str, object]:
    """Headers for an enqueued step: when it was sent (queue age), and the current
    trace context (W3C traceparent), so the step's span joins its caller's trace."""
    headers: dict[str, object] = {SENT_AT_HEADER: time.time()}
    inject(headers)
    return headers
