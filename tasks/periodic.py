"""Periodic jobs, scheduled by ``celery -A tasks beat``."""

from __future__ import annotations

from celeriac.reaper import cleanup as cleanup_runs
from celeriac.reaper import end_overdue_runs, settle_expired_reservations
from celeriac.reaper import reap as reap_steps
from config.celery import CLEANUP, REAP
from tasks.dispatch import send_steps
from tasks.worker import app, services, settings


@app.task(name=REAP, ignore_result=True)
def reap() -> int:
    dispatch = reap_steps(services().db)
    send_steps(app, dispatch, services().db)
    settle_expired_reservations(services().db, services().keeper)
    for report in end_overdue_runs(services().db):
        services().loop.announce(report)
    return len(dispatch)


@app.task(name=CLEANUP, ignore_result=True)
def cleanup() -> int:
    return cleanup_runs(services().db, retention_days=settings.retention_days)
