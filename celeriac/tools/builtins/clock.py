"""The current date and time in an IANA time zone.

Models do not know what day it is; this tool tells them. The clock is injected so a
test can pin "now" instead of sleeping or patching the datetime module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celeriac.errors import ToolError
from celeriac.tools.base import ToolContext, ToolSpec

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class CurrentTime:
    spec = ToolSpec(
        name="current_time",
        description=(
            "Get the current date, time and weekday. Pass an IANA time zone such as "
            "'Europe/Paris' or 'America/New_York'; the default is UTC."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name, e.g. 'Asia/Tokyo'. Default: UTC.",
                }
            },
            "additionalProperties": False,
        },
    )

    def __init__(self, clock: Clock | None = None):
        self._clock = clock or utc_now

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        name = str(arguments.get("timezone") or "UTC").strip() or "UTC"
        zone = _zone(name)
        now = self._clock()
        if now.tzinfo is None:
            # A naive clock is taken to be UTC, as datetime.utcnow() would be.
            now = now.replace(tzinfo=UTC)
        local = now.astimezone(zone).replace(microsecond=0)
        return f"{local.isoformat()} ({local:%A}) in {name}"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError covers malformed keys such as absolute paths or '..'.
        raise ToolError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/London'"
        ) from None
