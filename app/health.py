"""Liveness and readiness.

``/readyz`` asks each dependency one question it must answer within the request
timeouts (``Settings.store_*``, ``Settings.redis_*``): the store reads a row of
``runs`` (a lock held on the table blocks it, as it would block every request),
Redis and the broker answer a ping. Any that does not makes it 503, naming which.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from app.context import web

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as exc:
        # The driver's own error names the cause (LockNotAvailable, QueryCanceled...).
        cause = getattr(exc, "orig", None) or exc
        return f"error: {type(cause).__name__}"
    return "ok"


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    context = web()
    services = context.services
    checks = {
        "store": _check(services.db.ping),
        "redis": _check(services.redis.ping),
        "broker": _check(lambda: context.queue.ping_broker(
            services.settings.redis_connect_timeout_s)),
    }
    ready = all(v == "ok" for v in checks.values())
    body = jsonify({"status": "ok" if ready else "unavailable", "checks": checks})
    return (body, 200) if ready else (body, 503, {"Retry-After": "5"})
