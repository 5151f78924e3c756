"""Error answers: one exception carries an HTTP status through the request flow, and
one table names that status in each wire format.

    SimError(status, message)     -> rendered by the wire format of the endpoint
    └── BadRequest                -> 400 invalid_request_error
"""

from __future__ import annotations

from dataclasses import dataclass


class SimError(Exception):
    """An error answer, raised where it is decided and rendered at the edge."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after_s: float | None = None,
        fault: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        # Why the error happened, for the request log: "forced", "random", "rpm".
        self.fault = fault


class BadRequest(SimError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass(frozen=True)
class ErrorKind:
    anthropic: str  # error.type in Anthropic's envelope
    openai: str  # error.type in OpenAI's envelope
    openai_code: str | None  # error.code in OpenAI's envelope


ERROR_KINDS: dict[int, ErrorKind] = {
    400: ErrorKind("invalid_request_error", "invalid_request_error", None),
    401: ErrorKind("authentication_error", "invalid_request_error", "invalid_api_key"),
    403: ErrorKind("permission_error", "invalid_request_error", "permission_denied"),
    404: ErrorKind("not_found_error", "invalid_request_error", "not_found"),
    405: ErrorKind("invalid_request_error", "invalid_request_error", "method_not_allowed"),
    413: ErrorKind("request_too_large", "invalid_request_error", "request_too_large"),
    429: ErrorKind("rate_limit_error", "requests", "rate_limit_exceeded"),
    500: ErrorKind("api_error", "server_error", None),
    502: ErrorKind("api_error", "server_error", "bad_gateway"),
    503: ErrorKind("api_error", "server_error", "service_unavailable"),
    504: ErrorKind("timeout_error", "server_error", "gateway_timeout"),
    529: ErrorKind("overloaded_error", "server_error", "overloaded"),
}


def kind_for(status: int) -> ErrorKind:
    return ERROR_KINDS.get(status, ERROR_KINDS[500 if status >= 500 else 400])
