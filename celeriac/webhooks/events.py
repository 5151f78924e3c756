"""What a webhook says: the event types, their ids and their payloads.

An event id is a function of the run and the event type, so an event triggered twice
(a redelivered task, a retry after a crash) carries the same ``webhook-id`` and
receivers can drop the duplicate. The payload is built from the run's status
document by picking named fields, never by copying it: nothing else (metadata,
step arguments, anything secret) can leak into a delivery.
"""

from __future__ import annotations

from typing import Any, Literal

from celeriac.clock import utcnow

EventType = Literal["task.completed", "task.failed", "task.cancelled"]
EVENT_TYPES: tuple[EventType, ...] = ("task.completed", "task.failed", "task.cancelled")
_BY_STATUS: dict[str, EventType] = {
    "completed": "task.completed",
    "failed": "task.failed",
    "cancelled": "task.cancelled",
}
_DATA_FIELDS = (
    "task_id",
    "status",
    "result",
    "error",
    "usage",
    "model",
    "agent",
    "created_at",
    "finished_at",
)


def event_type_for(status: str) -> EventType | None:
    """The event a run entering ``status`` fires, or None if it fires none."""
    return _BY_STATUS.get(status)


def event_id(run_id: str, event_type: EventType) -> str:
    """``evt_<run_id>_task_completed``: the same every time the event is triggered."""
    return f"evt_{run_id}_{event_type.replace('.', '_')}"


def event_payload(run_document: dict[str, Any], event_type: EventType) -> dict[str, Any]:
    """``{"type", "timestamp", "data"}``, from ``celeriac.readmodels.documents.run_document``.

    ``timestamp`` is when the run finished, so every attempt sends the same body."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    return {
        "type": event_type,
        "timestamp": run_document.get("finished_at") or utcnow().isoformat(),
        "data": {name: run_document.get(name) for name in _DATA_FIELDS},
    }
