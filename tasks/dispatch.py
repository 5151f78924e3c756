"""Turn the loop's Dispatch records into Celery messages, by task name."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from celeriac.durability.reaper import mark_sent
from celeriac.execution.claims import Dispatch
from celeriac.observability.queue_depth import message_headers
from celeriac.store import Database
from config.celery import LLM_STEP, TOOL_STEP, native_priorities


def send_steps(app: Celery, steps: Iterable[Dispatch], db: Database | None = None) -> None:
    """Send, then mark sent: a crash in between leaves the step unsent, and the
    reaper sends it again within seconds (a duplicate is harmless: claims are atomic)."""
    steps = list(steps)
    native = native_priorities(app.conf.broker_url)
    for step in steps:
        app.send_task(
            # A summary step is an LLM call too.
            TOOL_STEP if step.kind == "tool" else LLM_STEP,
            args=[step.step_id],
            task_id=step.step_id,
            queue=step.queue,
            routing_key=step.queue,
            priority=step.level if native else None,
            headers=message_headers(),
        )
    if db is not None:
        mark_sent(db, [step.step_id for step in steps])
