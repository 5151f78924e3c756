"""One delivery attempt, and when to try again.

An attempt ends in one of three ways: delivered (2xx); failed for good (the URL is
refused, a redirect, 410 Gone, any other 4xx but 408 and 429); or failed for now
(5xx, 408, 429, a timeout, a connection or DNS failure), to be retried after
``next_delay``, which honours the receiver's ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpcore
import structlog

from celeriac.gateway.retry import RetryPolicy
from celeriac.webhooks.errors import UnresolvableHost, UrlRefused
from celeriac.webhooks.signing import encode_body, signature_headers
from celeriac.webhooks.ssrf import Resolver, UrlPolicy, check_url, url_host
from celeriac.webhooks.transport import Response, post

log = structlog.get_logger("celeriac.webhooks")

# Eleven waits between twelve attempts: 1, 2, 4 ... 256, 300, 300 s, each cut by up
# to half by jitter, so 9 to 18 minutes from the first attempt to the last.
MAX_ATTEMPTS = 12
CONNECT_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 10.0
USER_AGENT = "Celeriac-Webhooks/1"
BACKOFF = RetryPolicy(backoff_base_s=1.0, backoff_cap_s=300.0)
_RETRY_AFTER_STATUSES = {408, 429, 503}


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    retryable: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    # Stable and few, fit for a metric label: url_refused, unresolvable_host,
    # timeout, connect_error, network_error, protocol_error, redirect, gone, http_status.
    error_code: str | None = None
    retry_after_s: float | None = None
    address: str | None = None  # the address the request went to


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    event_id: str,
    secret: str,
    policy: UrlPolicy,
    timeout_s: float = TOTAL_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.time,
) -> DeliveryResult:
    """POST ``payload``, signed, to ``url``. Never raises for a failed delivery; an
    ``InvalidSecret`` is a configuration error and is raised."""
    started = time.monotonic()
    body = encode_body(payload)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signature_headers(secret, msg_id=event_id, timestamp=int(clock()), body=body),
    }
    code: str | None
    error: str | None
    status: int | None = None
    address: str | None = None
    retry_after: float | None = None
    try:
        target = check_url(url, policy, resolver=resolver)
        response = post(
            target,
            body.encode(),
            headers,
            connect_timeout_s=connect_timeout_s,
            total_timeout_s=timeout_s,
            ssl_context=ssl_context,
        )
    except UrlRefused as exc:
        code, error, retryable = "url_refused", exc.message, False
    except UnresolvableHost as exc:
        code, error, retryable = "unresolvable_host", exc.message, True
    except httpcore.TimeoutException as exc:
        code, error, retryable = "timeout", f"timed out ({type(exc).__name__}: {exc})", True
    except httpcore.ConnectError as exc:
        code, error, retryable = "connect_error", f"cannot connect: {exc}", True
    except httpcore.NetworkError as exc:
        code, error, retryable = "network_error", f"connection lost: {exc}", True
    except httpcore.ProtocolError as exc:
        code, error, retryable = "protocol_error", f"bad HTTP response: {exc}", True
    else:
        status, address = response.status, str(response.address)
        code, error, retryable, retry_after = _judge(response)
    result = DeliveryResult(
        ok=code is None,
        retryable=retryable,
        status_code=status,
        error=error,
        duration_ms=(time.monotonic() - started) * 1000,
        error_code=code,
        retry_after_s=retry_after,
        address=address,
    )
    log.info(
        "webhook.attempt",
        event_id=event_id,
        host=url_host(url),
        status_code=result.status_code,
        outcome="delivered" if result.ok else ("retry" if result.retryable else "failed"),
        error_code=result.error_code,
        duration_ms=round(result.duration_ms, 1),
    )
    return result


def next_delay(attempt: int, *, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): 1, 2, 4 ...
    up to 5 minutes, with jitter; at least the receiver's Retry-After, within the cap."""
    delay = BACKOFF.backoff(attempt)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, BACKOFF.backoff_cap_s))
    return delay


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    moment = time.time() if now is None else now
    return max(0.0, when.timestamp() - moment)


def _judge(response: Response) -> tuple[str | None, str | None, bool, float | None]:
    """(error code, error, retryable, retry-after) of a response; no code means delivered."""
    status = response.status
    if 200 <= status < 300:
        return None, None, False, None
    if 300 <= status < 400:
        return "redirect", f"HTTP {status}: redirects are not followed", False, None
    excerpt = " ".join(response.body.decode("utf-8", "replace").split())[:200]
    said = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status == 410:
        return "gone", f"{said} (the receiver wants no more deliveries)", False, None
    retry_after = None
    if status in _RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    retryable = status in (408, 429) or not 400 <= status < 500
    return "http_status", said, retryable, retry_after
