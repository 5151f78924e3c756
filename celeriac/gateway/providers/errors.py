"""Translate SDK exceptions into Celeriac's tree, at the adapter boundary.

Both SDKs share a shape (APIStatusError with ``status_code`` and ``response``,
APITimeoutError, APIConnectionError), so one translation serves both.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from celeriac.errors import (
    ContextWindowExceeded,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    TransientProviderError,
)

TRANSIENT_STATUSES = {408, 409, 429, 500, 502, 503, 504, 529}
_PERMANENT_CODES = {
    400: "provider_bad_request",
    401: "provider_auth_failed",
    403: "provider_forbidden",
    404: "provider_model_not_found",
    413: "provider_request_too_large",
    422: "provider_bad_request",
}
_CONTEXT_MARKERS = ("context length", "context_length", "too long", "maximum context", "prompt is")
_POLICY_MARKERS = ("content policy", "content_policy", "safety", "content_filter")


def retry_after_seconds(headers: Any) -> float | None:
    """Read ``retry-after`` (seconds or an HTTP date), or ``retry-after-ms``."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def translate(exc: Exception, sdk: Any, provider: str) -> ProviderError:
    """Map one SDK exception (``sdk`` is the anthropic or openai module)."""
    if isinstance(exc, sdk.APITimeoutError):
        return TransientProviderError(f"{provider}: request timed out", code="provider_timeout")
    if isinstance(exc, sdk.APIConnectionError):
        return TransientProviderError(
            f"{provider}: connection failed: {exc}", code="provider_connection_error"
        )
    if isinstance(exc, sdk.APIStatusError):
        status = int(exc.status_code)
        message = f"{provider} answered {status}: {_message(exc)}"
        lowered = message.lower()
        retry_after = retry_after_seconds(getattr(exc.response, "headers", None))
        if status == 429:
            return RateLimited(message, status=status, retry_after_s=retry_after)
        if status in TRANSIENT_STATUSES or status >= 500:
            code = "provider_overloaded" if status == 529 else "provider_unavailable"
            return TransientProviderError(
                message, status=status, retry_after_s=retry_after, code=code
            )
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextWindowExceeded(message, status=status)
        if any(marker in lowered for marker in _POLICY_MARKERS):
            return PermanentProviderError(message, status=status, code="content_policy")
        code = _PERMANENT_CODES.get(status, "provider_rejected")
        return PermanentProviderError(message, status=status, code=code)
    return TransientProviderError(f"{provider}: {type(exc).__name__}: {exc}")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)[:500]
