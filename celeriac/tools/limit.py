"""A time limit for one tool call.

Workers run a thread pool, and a Python thread cannot be killed: Celery's time
limits do not apply to it, and a tool stuck on a socket or in a loop would hold its
step, and one of the worker's threads, forever. So the tool runs in a helper thread
and the step waits for it only up to the limit. Past it, the step records a
``tool_timeout`` error result for the model, which can try something else (a tool
failure is part of the conversation, as elsewhere; the task's own wall-clock limit
still ends a run that keeps timing out). The helper thread is abandoned, not
stopped: it is logged when abandoned and again if it ever finishes, and a tool with
side effects must still use its idempotency key, as its effect may land late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from celeriac.tools.base import ToolResult

log = structlog.get_logger("celeriac.tools.limit")

DEFAULT_TOOL_TIMEOUT_S = 60.0


def run_with_limit(
    call: Callable[[], ToolResult], limit_s: float, *, tool: str, step: str
) -> ToolResult:
    """``call`` must not raise (``ToolRegistry.execute`` never does)."""
    box: list[ToolResult] = []
    done = threading.Event()
    abandoned = threading.Event()
    started = time.monotonic()

    def target() -> None:
        try:
            box.append(call())
        finally:
            done.set()
            if abandoned.is_set():
                log.warning("tool_abandoned_finished", tool=tool, step=step,
                            after_s=round(time.monotonic() - started, 3))

    helper = threading.Thread(target=target, name=f"celeriac-tool-{tool}", daemon=True)
    helper.start()
    if done.wait(limit_s) and box:
        return box[0]
    abandoned.set()
    log.warning("tool_abandoned", tool=tool, step=step, limit_s=limit_s,
                thread=helper.name)
    return ToolResult(
        f"{tool} did not finish within its time limit of {limit_s:g} s and was abandoned "
        f"(tool_timeout)",
        is_error=True,
        code="tool_timeout",
    )
