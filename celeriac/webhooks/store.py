"""The delivery log: one row per (event, endpoint), the record retries work from.

The unique (event_id, url) pair makes recording an event idempotent, so a run that
finishes twice (a redelivered step) still delivers once per endpoint. An attempt is
claimed under a lease before the POST, so a redelivered delivery task does not send
while another worker is sending; a lease that runs out (a crashed worker) frees the
delivery for the next try. ``next_attempt_at`` lets a periodic sweep find pending
deliveries whose retry message was lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import DateTime, Index, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from celeriac.clock import aware, utcnow
from celeriac.store import Database
from celeriac.store.schema import Base
from celeriac.webhooks.delivery import MAX_ATTEMPTS, TOTAL_TIMEOUT_S, DeliveryResult, next_delay
from celeriac.webhooks.events import EventType

DeliveryStatus = Literal["pending", "delivered", "failed"]
MAX_URL_LENGTH = 2048  # the unique index covers the URL
LEASE_S = 4 * TOTAL_TIMEOUT_S


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "url", name="uq_webhook_deliveries_event_url"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(160))
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The body every attempt sends, fixed when the event is recorded.
    payload: Mapped[dict[str, Any]] = mapped_column()
    attempts: Mapped[int] = mapped_column(default=0)
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    last_error_code: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


@dataclass(frozen=True)
class Recorded:
    """What ``record_result`` decided: the new status and, when pending, the wait
    before the next attempt (the task layer's retry countdown)."""

    status: DeliveryStatus
    retry_in_s: float | None


def record_event(
    db: Database,
    *,
    event_id: str,
    run_id: str,
    url: str,
    event_type: EventType,
    payload: dict[str, Any],
) -> tuple[str, bool]:
    """(delivery id, created): the existing row's id when the event was recorded
    for this URL before."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL longer than {MAX_URL_LENGTH} characters")
    try:
        with db.session() as s:
            existing = _find(s, event_id, url)
            if existing is not None:
                return existing, False
            now = utcnow()
            delivery_id = f"whd_{uuid.uuid4().hex}"
            s.add(
                WebhookDelivery(
                    id=delivery_id,
                    event_id=event_id,
                    run_id=run_id,
                    url=url,
                    event_type=event_type,
                    status="pending",
                    payload=payload,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        return delivery_id, True
    except IntegrityError:
        # Another process recorded it between our look and our insert.
        with db.reader() as s:
            found = _find(s, event_id, url)
        if found is None:
            raise
        return found, False


def claim_attempt(
    db: Database,
    delivery_id: str,
    *,
    lease_s: float = LEASE_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> WebhookDelivery | None:
    """Count an attempt and lease the delivery, or None when there is nothing to send:
    unknown, already delivered or failed, or leased by an attempt in flight. A
    delivery whose attempts ran out (its last one crashed) is marked failed here."""
    now = utcnow()
    with db.session() as s:
        row = s.get(WebhookDelivery, delivery_id, with_for_update=True)
        if row is None or row.status != "pending":
            return None
        if row.lease_until is not None and aware(row.lease_until) > now:
            return None
        if row.attempts >= max_attempts:
            row.status, row.lease_until, row.updated_at = "failed", None, now
            row.last_error = row.last_error or f"gave up after {row.attempts} attempts"
            return None
        row.attempts += 1
        row.lease_until = now + timedelta(seconds=lease_s)
        # If this attempt never reports (a crashed worker), it is overdue from here.
        row.next_attempt_at = row.lease_until
        row.updated_at = now
        return row


def record_result(
    db: Database,
    delivery_id: str,
    result: DeliveryResult,
    *,
    max_attempts: int = MAX_ATTEMPTS,
) -> Recorded:
    """Record an attempt's outcome. Pending stays pending only when the failure is
    retryable and attempts remain; a delivered or failed row is never changed."""
    now = utcnow()
    with db.session() as s:
        row = s.get(WebhookDelivery, delivery_id, with_for_update=True)
        if row is None:
            raise LookupError(f"no webhook delivery {delivery_id!r}")
        if row.status != "pending":
            return Recorded(cast(DeliveryStatus, row.status), None)
        row.last_status_code = result.status_code
        row.last_error_code = result.error_code
        row.last_error = result.error
        row.lease_until, row.updated_at = None, now
        if result.ok:
            row.status, row.delivered_at = "delivered", now
            return Recorded("delivered", None)
        if not result.retryable or row.attempts >= max_attempts:
            row.status = "failed"
            return Recorded("failed", None)
        delay = next_delay(row.attempts, retry_after_s=result.retry_after_s)
        row.next_attempt_at = now + timedelta(seconds=delay)
        return Recorded("pending", delay)


def overdue(db: Database, *, grace_s: float = 60.0, limit: int = 100) -> list[str]:
    """Pending deliveries whose next attempt is ``grace_s`` past due: their retry
    message was lost, or their worker died mid-attempt. For a periodic sweep to
    enqueue again (a duplicate enqueue is harmless: the claim is leased)."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    with db.reader() as s:
        return list(
            s.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at < cutoff
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
        )


def _find(s: Session, event_id: str, url: str) -> str | None:
    return s.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.event_id == event_id, WebhookDelivery.url == url
        )
    )
