"""Webhook delivery tasks: one attempt per run, retried with backoff and jitter;
the delivery log makes each event go to each endpoint once, and a periodic sweep
re-sends what a crash or a lost retry left behind."""

from __future__ import annotations

from celery import Task

from celeriac.observability.observer import RunReport
from celeriac.webhooks import claim_attempt, deliver, overdue, record_result
from celeriac.webhooks.trigger import webhook_event
from config.celery import WEBHOOK, WEBHOOK_SWEEP
from tasks.worker import app, services, settings


def enqueue_webhook(report: RunReport) -> None:
    delivery_id = webhook_event(services().db, report)
    if delivery_id is not None:
        app.send_task(WEBHOOK, args=[delivery_id], queue="default")


@app.task(bind=True, name=WEBHOOK, acks_late=True, ignore_result=True, max_retries=None,
          soft_time_limit=60)
def deliver_webhook(self: Task, delivery_id: str) -> str:  # type: ignore[type-arg]
    db = services().db
    row = claim_attempt(db, delivery_id)
    if row is None:
        return "skipped"
    if settings.webhook_secret is None:
        return "unconfigured"
    result = deliver(
        row.url,
        db.redactor.value(row.payload),  # stored redacted; this is the last look
        event_id=row.event_id,
        secret=settings.webhook_secret.get_secret_value(),
        policy=services().webhook_policy,
    )
    recorded = record_result(db, delivery_id, result)
    if recorded.retry_in_s is not None:
        raise self.retry(countdown=recorded.retry_in_s)
    return recorded.status


@app.task(name=WEBHOOK_SWEEP, ignore_result=True)
def sweep_webhooks() -> int:
    due = overdue(services().db)
    for delivery_id in due:
        app.send_task(WEBHOOK, args=[delivery_id], queue="default")
    return len(due)
