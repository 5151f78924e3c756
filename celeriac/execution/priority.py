"""Priorities: names or 0-9, mapped onto three queues.

Numbers follow AMQP's convention (9 is the most urgent), so the same number means
the same thing on RabbitMQ, where it is also sent as the native message priority.
"""

from __future__ import annotations

from dataclasses import dataclass

from celeriac.errors import InvalidRequest

QUEUES = ("high", "default", "low")
_LEVEL_OF_NAME = {"high": 8, "normal": 5, "low": 1}


@dataclass(frozen=True)
class Priority:
    name: str  # "high" | "normal" | "low"
    level: int  # 0-9, 9 most urgent

    @property
    def queue(self) -> str:
        return "default" if self.name == "normal" else self.name


def priority_from_level(level: int) -> Priority:
    if level >= 7:
        return Priority("high", level)
    if level >= 3:
        return Priority("normal", level)
    return Priority("low", level)


def resolve_priority(value: str | int | None, default: str) -> Priority:
    if value is None:
        value = default
    if isinstance(value, bool):  # bool is an int in Python; refuse it explicitly
        raise InvalidRequest("priority must be high, normal, low or 0-9", field="priority")
    if isinstance(value, int):
        if not 0 <= value <= 9:
            raise InvalidRequest("priority must be between 0 and 9", field="priority")
        return priority_from_level(value)
    if value not in _LEVEL_OF_NAME:
        raise InvalidRequest("priority must be high, normal, low or 0-9", field="priority")
    return Priority(value, _LEVEL_OF_NAME[value])
