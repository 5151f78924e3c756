"""One place maps error codes to HTTP statuses. Every error, including Flask's and
Werkzeug's own, leaves as ``{"error": {"code", "message", "field"?}}``, never as
an HTML page or a bare 500.

A dependency that is down or too slow (Redis, the store, the broker: see
``celeriac.durability.outages``) is ``503`` with ``Retry-After``, whichever view or hook met it.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from celeriac.durability.outages import as_unavailable
from celeriac.errors import (
    BrokerUnavailable,
    BudgetSpent,
    CeleriacError,
    Conflict,
    InvalidRequest,
    NotFound,
    Unavailable,
)

log = structlog.get_logger("app.errors")

_STATUS_BY_TYPE: list[tuple[type[CeleriacError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (Unavailable, 503),
]
_STATUS_BY_CODE = {
    "malformed_json": 400,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "bad_request": 400,
    "price_unknown": 422,
    "enqueue_failed": 503,
    "budget_exhausted": 429,
    "unavailable": 503,
}


def error_response(
    status: int, code: str, message: str, field: str | None = None
) -> ResponseReturnValue:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return jsonify({"error": body}), status


def status_for(error: CeleriacError) -> int:
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    for kind, status in _STATUS_BY_TYPE:
        if isinstance(error, kind):
            return status
    return 500


def outage(error: BaseException) -> Unavailable | None:
    """The core's outages, and the broker's: kombu raises its transports'
    connection errors (Redis, amqp) as its own OperationalError."""
    found = as_unavailable(error)
    if found is None and isinstance(error, KombuOperationalError):
        found = BrokerUnavailable()
    return found


def validation_error(exc: ValidationError) -> CeleriacError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "missing":
        message = f"{field} is required"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first['msg']}"
    return InvalidRequest(message, field=field, code="validation_error")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CeleriacError)
    def _celeriac(error: CeleriacError) -> ResponseReturnValue:
        body, status = error_response(status_for(error), error.code, error.message, error.field)
        headers = {}
        if isinstance(error, BudgetSpent | Unavailable):
            headers["Retry-After"] = str(error.retry_after_s)
        elif status == 503:
            headers["Retry-After"] = str(Unavailable.retry_after_default_s)
        return body, status, headers

    @app.errorhandler(ValidationError)
    def _validation(error: ValidationError) -> ResponseReturnValue:
        converted = validation_error(error)
        return error_response(422, converted.code, converted.message, converted.field)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> ResponseReturnValue:
        status = error.code or 500
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(status, "bad_request" if status < 500 else "internal_error")
        body, status_code = error_response(status, code, error.description or error.name)
        # Keep what the exception says about itself, e.g. Allow on a 405.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return body, status_code, headers

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> ResponseReturnValue:
        unavailable = outage(error)
        if unavailable is not None:
            # A warning without a traceback: the cause is known, and its type is enough.
            log.warning("dependency_unavailable", code=unavailable.code,
                        error_type=type(error).__name__)
            return _celeriac(unavailable)
        log.exception("unhandled_error", error_type=type(error).__name__)
        return error_response(500, "internal_error", "internal error")
