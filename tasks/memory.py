"""Indexing finished turns for the recall tool, off the agent's path: a task on the
low queue, sent only when some agent in the catalog can recall (so a deployment
that never recalls never loads the embedding model). A lost message costs nothing
lasting: the recall tool catches up on unindexed turns before it searches."""

from __future__ import annotations

import structlog
from celery import Task

from celeriac.errors import CeleriacError
from celeriac.observability.observer import RunReport
from config.celery import REMEMBER
from tasks.worker import app, services

log = structlog.get_logger(__name__)


def enqueue_remember(report: RunReport) -> None:
    if services().catalog().uses_tool("recall"):
        app.send_task(REMEMBER, args=[report.run_id], queue="low")


@app.task(bind=True, name=REMEMBER, acks_late=True, ignore_result=True, max_retries=5)
def remember_run(self: Task, run_id: str) -> int:  # type: ignore[type-arg]
    try:
        return services().memory.remember_run(run_id)
    except CeleriacError as exc:  # the model package is not installed: nothing to retry
        log.warning("remember_failed", run_id=run_id, error=exc.message)
        return 0
    except Exception as exc:
        raise self.retry(countdown=2 ** min(int(self.request.retries or 0), 6)) from exc
