"""Who is calling: API keys (``Authorization: Bearer``) mapped to tenants.

Once any key exists, every ``/agent/*`` request needs a valid one, in every mode.
Before the first key, only dev mode (``make run``, on localhost) is open, and every
task belongs to the ``default`` tenant; outside dev mode the API is closed from the
start, and the 401 says how to make a key. Health, the OpenAPI document and the
static pages are outside ``/agent/`` and stay open: they carry no tenant's data.
Each key also has a request rate; past it the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import math

from flask import Flask, g, request
from flask.typing import ResponseReturnValue

from app.context import web
from app.errors import error_response
from celeriac.api_keys import Authenticator

OPEN_TENANT = "default"
INVALID_KEY = "a valid API key is required: Authorization: Bearer <key>"
NO_KEY_YET = (
    "an API key is required (this server is not in dev mode) and none exists yet: "
    "make one with `celeriac keys create TENANT` and send it as "
    "Authorization: Bearer <key>"
)


def current_tenant() -> str:
    tenant: str = g.get("tenant", OPEN_TENANT)
    return tenant


def current_key_id() -> int | None:
    """The id of the API key this request came with (None while the API is open)."""
    key_id: int | None = g.get("key_id")
    return key_id


def _unauthorized(message: str) -> ResponseReturnValue:
    body, status = error_response(401, "unauthorized", message)
    return body, status, {"WWW-Authenticate": 'Bearer realm="celeriac"'}


def install_auth(app: Flask, authenticator: Authenticator) -> None:
    @app.before_request
    def _authenticate() -> ResponseReturnValue | None:
        if not request.path.startswith("/agent/"):
            return None
        g.tenant = OPEN_TENANT
        settings = web().services.settings
        keys_exist = authenticator.keys_exist()
        if not keys_exist:
            return None if settings.dev_mode else _unauthorized(NO_KEY_YET)
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        principal = (
            authenticator.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        )
        if principal is None:
            return _unauthorized(INVALID_KEY)
        g.tenant = principal.tenant
        g.key_id = principal.key_id
        grant = web().services.limiter.acquire_rate(
            f"apikey:{principal.key_id}",
            per_minute=settings.api_rate_per_minute,
            burst=settings.api_burst,
        )
        if not grant.granted:
            body, status = error_response(429, "rate_limited", "too many requests for this key")
            return body, status, {"Retry-After": str(max(1, math.ceil(grant.wait_s)))}
        return None
