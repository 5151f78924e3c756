"""From a finished run to a logged webhook event: the part both entry points share
(the worker when a step ends a run; the web app when a request cancels one)."""

from __future__ import annotations

from celeriac.observability.observer import RunReport
from celeriac.readmodels.documents import load_run_document
from celeriac.store import Database
from celeriac.webhooks.events import event_id, event_payload, event_type_for
from celeriac.webhooks.store import record_event


def webhook_event(db: Database, report: RunReport) -> str | None:
    """Log the event for the run's endpoint (once per event and URL); return the
    delivery id to enqueue, or None when there is nothing to send."""
    event_type = event_type_for(report.status)
    if event_type is None or not report.webhook_url:
        return None
    document = load_run_document(db, report.run_id)
    delivery_id, _created = record_event(
        db,
        event_id=event_id(report.run_id, event_type),
        run_id=report.run_id,
        url=report.webhook_url,
        event_type=event_type,
        payload=event_payload(document, event_type),
    )
    return delivery_id
