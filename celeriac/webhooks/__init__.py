"""Webhooks: a signed POST to a task's ``webhook_url`` when it completes, fails or is
cancelled, delivered at least once per endpoint, never to a private address.

    check_url      ssrf.py       is this URL allowed, and at which addresses
    deliver        delivery.py   one attempt, judged ok / retryable / permanent
    next_delay     delivery.py   when to try again
    event_payload  events.py     what is sent, and its stable event id
    record_event   store.py      the delivery log, idempotent per (event, URL)
"""

from celeriac.webhooks.delivery import (
    CONNECT_TIMEOUT_S,
    MAX_ATTEMPTS,
    TOTAL_TIMEOUT_S,
    DeliveryResult,
    deliver,
    next_delay,
)
from celeriac.webhooks.errors import InvalidSecret, UnresolvableHost, UrlRefused, WebhookError
from celeriac.webhooks.events import (
    EVENT_TYPES,
    EventType,
    event_id,
    event_payload,
    event_type_for,
)
from celeriac.webhooks.signing import signature_headers, signer
from celeriac.webhooks.ssrf import Target, UrlPolicy, check_url
from celeriac.webhooks.store import (
    Recorded,
    WebhookDelivery,
    claim_attempt,
    overdue,
    record_event,
    record_result,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "EVENT_TYPES",
    "MAX_ATTEMPTS",
    "TOTAL_TIMEOUT_S",
    "DeliveryResult",
    "EventType",
    "InvalidSecret",
    "Recorded",
    "Target",
    "UnresolvableHost",
    "UrlPolicy",
    "UrlRefused",
    "WebhookDelivery",
    "WebhookError",
    "check_url",
    "claim_attempt",
    "deliver",
    "event_id",
    "event_payload",
    "event_type_for",
    "next_delay",
    "overdue",
    "record_event",
    "record_result",
    "signature_headers",
    "signer",
]
