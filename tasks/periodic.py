"""Periodic jobs, scheduled by ``celery -A tasks beat``."""

from __future__ import annotations

import math

from celeriac import redis_keys as keys
from celeriac.durability.holdings import orphaned_steps
from celeriac.durability.reaper import cleanup as cleanup_runs
from celeriac.durability.reaper import end_overdue_runs, resend_orphans, settle_expired_reservations
from celeriac.durability.reaper import reap as reap_steps
from config.celery import CLEANUP, REAP
from tasks.dispatch import send_steps
from tasks.worker import app, services, settings


@app.task(name=REAP, ignore_result=True)
def reap() -> int:
    redis = services().redis
    held_s = max(1, math.ceil(settings.reap_interval_s))
    if not redis.set(keys.REAPER_LOCK, "1", nx=True, ex=held_s):
        return 0  # another worker is reaping right now
    try:
        # First the steps dead workers held (and marked sent), so the pass below
        # does not count them as stale and send them twice.
        orphans = resend_orphans(services().db, orphaned_steps(redis))
        send_steps(app, orphans, services().db)
        dispatch = reap_steps(services().db)
        send_steps(app, dispatch, services().db)
        settle_expired_reservations(services().db, services().keeper)
        for report in end_overdue_runs(services().db):
            services().loop.announce(report)
    finally:
        redis.delete(keys.REAPER_LOCK)
    return len(orphans) + len(dispatch)


@app.task(name=CLEANUP, ignore_result=True)
def cleanup() -> int:
    return cleanup_runs(services().db, retention_days=settings.retention_days)
