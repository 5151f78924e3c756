"""Celeriac's exception tree. Every error has a stable ``code``.

    CeleriacError
    ├── InvalidRequest            (bad input; ``field`` names the culprit)
    │   ├── UnknownAgent
    │   ├── UnknownModel
    │   └── ProviderNotConfigured
    ├── NotFound
    ├── Conflict
    ├── ProviderError             (translated at the provider adapter boundary)
    │   ├── TransientProviderError   (retry: 429, 5xx, 529, timeouts, connection)
    │   │   └── RateLimited
    │   └── PermanentProviderError   (fail at once: 400, 401, 403, 404, policy)
    │       ├── ContextWindowExceeded
    │       └── RequestExceedsTPM  (one call over a model's whole tokens per minute)
    ├── ToolError                 (shown to the model as a tool result, never a crash)
    ├── BudgetExceeded            (a call would pass a task, tenant or global cap)
    ├── BudgetSpent               (a daily cap is used up: 429 until it resets)
    ├── RunFailed                 (a run's terminal failure: max_steps, dead letter ...)
    ├── SchemaError               (the store's schema cannot be migrated to the models')
    └── Unavailable               (a dependency is down or too slow: 503, retry later)
        ├── StoreUnavailable         (the database: unreachable, a lock or statement timeout)
        ├── RedisUnavailable
        └── BrokerUnavailable

``Unavailable`` is translated from the clients' own errors where they surface
(``celeriac.durability.outages``); a worker retries the step, as for any infrastructure error,
and never fails it for an outage.
"""

from __future__ import annotations


class CeleriacError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(CeleriacError):
    code = "invalid_request"


class UnknownAgent(InvalidRequest):
    code = "unknown_agent"


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class ProviderNotConfigured(InvalidRequest):
    code = "provider_not_configured"


class NotFound(CeleriacError):
    code = "not_found"


class Conflict(CeleriacError):
    code = "conflict"


class ProviderError(CeleriacError):
    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message, code=code)
        self.status = status
        self.retry_after_s = retry_after_s


class TransientProviderError(ProviderError):
    code = "provider_unavailable"


class RateLimited(TransientProviderError):
    code = "provider_rate_limited"


class PermanentProviderError(ProviderError):
    code = "provider_rejected"


class ContextWindowExceeded(PermanentProviderError):
    code = "context_window_exceeded"


class RequestExceedsTPM(PermanentProviderError):
    """One call's estimated tokens exceed the model's whole tokens per minute: no wait
    makes room for it (a provider rejects such a request), so it fails at once."""

    code = "request_exceeds_tpm_limit"

    def __init__(self, model: str, tokens: int, tpm: int):
        super().__init__(f"a call to {model} is estimated at {tokens} tokens (prompt and "
                         f"max_tokens), more than its limit of {tpm} tokens per minute")
        self.model, self.tokens, self.tpm = model, tokens, tpm


class ToolError(CeleriacError):
    code = "tool_error"


class BudgetExceeded(CeleriacError):
    code = "budget_exceeded"


class BudgetSpent(CeleriacError):
    """A daily cap is used up: new submissions wait for the window's reset."""

    code = "budget_exhausted"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RunFailed(CeleriacError):
    code = "run_failed"


class SchemaError(CeleriacError):
    """Raised at start-up (``create_schema``), never to a client."""

    code = "schema_error"


class Unavailable(CeleriacError):
    """A dependency did not answer in time: the request may succeed if retried."""

    code = "unavailable"
    what = "a dependency"
    retry_after_default_s = 5

    def __init__(self, message: str | None = None, *, retry_after_s: int | None = None):
        super().__init__(message or f"{self.what} is unavailable; retry later")
        self.retry_after_s = retry_after_s or self.retry_after_default_s


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
    what = "the store"


class RedisUnavailable(Unavailable):
    code = "redis_unavailable"
    what = "Redis"


class BrokerUnavailable(Unavailable):
    code = "broker_unavailable"
    what = "the broker"
