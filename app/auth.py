"""Who is calling: API keys (``Authorization: Bearer``) mapped to tenants.

Until the first key is made, the API is open and every task belongs to the
``default`` tenant (``make run`` says so). Once any key exists, every ``/agent/*``
request needs a valid one, in every mode. Each key also has a request rate; past
it the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import math

from flask import Flask, g, request
from flask.typing import ResponseReturnValue

from app.context import web
from app.errors import error_response
from celeriac.auth import Authenticator

OPEN_TENANT = "default"


def current_tenant() -> str:
    tenant: str = g.get("tenant", OPEN_TENANT)
    return tenant


def install_auth(app: Flask, authenticator: Authenticator) -> None:
    @app.before_request
    def _authenticate() -> ResponseReturnValue | None:
        if not request.path.startswith("/agent/"):
            return None
        g.tenant = OPEN_TENANT
        if not authenticator.keys_exist():
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        principal = (
            authenticator.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        )
        if principal is None:
            body, status = error_response(
                401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>"
            )
            return body, status, {"WWW-Authenticate": 'Bearer realm="celeriac"'}
        g.tenant = principal.tenant
        settings = web().services.settings
        grant = web().services.limiter.acquire_rate(
            f"apikey:{principal.key_id}",
            per_minute=settings.api_rate_per_minute,
            burst=settings.api_burst,
        )
        if not grant.granted:
            body, status = error_response(429, "rate_limited", "too many requests for this key")
            return body, status, {"Retry-After": str(max(1, math.ceil(grant.wait_s)))}
        return None
