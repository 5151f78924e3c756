"""Tools for the chaos and time-limit tests, loaded into workers through
``CELERIAC_EXTRA_TOOLS=tests.chaos.tools:make_tools``.

``record_effect`` is a tool with a real side effect, written the way a side-effecting
tool must be: the effect and its idempotency marker (the step id, from
``ToolContext.idempotency_key``) are written in one atomic Lua script, so a step
redelivered after its worker died, even mid-tool, never applies the effect twice.
It also logs every time it *runs* (not idempotent, on purpose), so a test can tell
a tool that was run again from one whose journaled result was replayed.

``sleep`` sleeps, for the tool time limit.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from celeriac.tools.base import Tool, ToolContext, ToolSpec
from config.settings import Settings

EFFECTS = "chaos:effects"  # list of idempotency keys, one per applied effect
RUNS_PREFIX = "chaos:runs:"  # list of start times, one per run of the tool, per step

# Apply the effect only if its key was never seen: marker and effect together.
_APPLY_ONCE = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def effect_marker(key: str) -> str:
    return f"chaos:effect:{key}"


class RecordEffect:
    spec = ToolSpec(
        name="record_effect",
        description="Record an effect (for chaos tests): exactly once per tool step.",
        input_schema={
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "work_ms": {"type": "integer", "minimum": 0, "maximum": 5000},
            },
            "required": ["label"],
            "additionalProperties": False,
        },
    )

    def __init__(self, redis: Redis):
        self.redis = redis
        self._apply = redis.register_script(_APPLY_ONCE)

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        key = context.idempotency_key
        self.redis.rpush(RUNS_PREFIX + key, repr(time.time()))
        # Some work before the effect, so that a kill can land mid-tool.
        time.sleep(int(arguments.get("work_ms", 0)) / 1000)
        label = str(arguments["label"])
        applied = self._apply(keys=[effect_marker(key), EFFECTS], args=[key, label])
        return f"effect {label} recorded" + ("" if applied else " (already applied)")


class Sleep:
    spec = ToolSpec(
        name="sleep",
        description="Sleep for some seconds (to test tool time limits).",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 600}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
    )

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        time.sleep(float(arguments["seconds"]))
        return f"slept {arguments['seconds']} s"


def make_tools(settings: Settings) -> list[Tool]:
    return [RecordEffect(Redis.from_url(settings.redis_url, decode_responses=True)), Sleep()]
