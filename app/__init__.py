"""The web front end: the JSON API, the live form, health and the OpenAPI document.

``create_app()`` is the entry point (gunicorn: ``app:create_app()``). It never runs
an agent: it validates, persists, enqueues and answers.
"""

from __future__ import annotations

import re
import uuid

import structlog
from flask import Flask, g, request
from flask.wrappers import Response

from app import api, dashboard, events, health, openapi, providers, web
from app.auth import install_auth
from app.context import WebContext
from app.errors import register_error_handlers
from app.json_provider import StrictJSONProvider
from app.queueing import StepQueue
from app.streams import RunWatcher
from celeriac.api_keys import Authenticator
from celeriac.observability.observer import RunReport
from celeriac.readmodels.documents import run_versions
from celeriac.redaction import Redactor
from celeriac.services import Services
from celeriac.webhooks.trigger import webhook_event
from config.logging import configure_logging
from config.settings import Settings
from config.tracing import configure_tracing

REQUEST_ID = re.compile(r"[!-~]{1,64}")


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> Flask:
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.log_level, Redactor(settings.secret_values()))
    flask_app = Flask(__name__)
    flask_app.json = StrictJSONProvider(flask_app)
    if configure_tracing("celeriac-web", settings.tracing_mode):
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(flask_app)
    # One byte over the limit: with a chunked body (no Content-Length) Werkzeug stops
    # reading at the limit without complaint, so json_body() checks the length itself.
    flask_app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    flask_app.json.sort_keys = False  # type: ignore[attr-defined]
    services = Services(settings, request_timeouts=True)
    services.db  # noqa: B018 - create the schema at start-up, not on the first request
    queue = StepQueue(settings)
    authenticator = Authenticator(services.db)
    run_watcher = RunWatcher(lambda ids: run_versions(services.db, ids), authenticator.revoked)
    flask_app.extensions["celeriac"] = WebContext(services=services, queue=queue,
                                                  authenticator=authenticator,
                                                  run_watcher=run_watcher)

    def _webhook_on_cancel(report: RunReport) -> None:
        delivery_id = webhook_event(services.db, report)
        if delivery_id is not None:
            queue.send_webhook(delivery_id)

    services.loop.on_webhook = _webhook_on_cancel
    register_error_handlers(flask_app)
    install_auth(flask_app, authenticator)
    for blueprint in (api.bp, dashboard.bp, events.bp, health.bp, openapi.bp, providers.bp,
                      web.bp):
        flask_app.register_blueprint(blueprint)

    @flask_app.before_request
    def _bind_request_id() -> None:
        request_id = request.headers.get("X-Request-ID", "")[:64]
        # Echoed in a response header and logged: printable ASCII only, else our own.
        g.request_id = request_id if REQUEST_ID.fullmatch(request_id) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @flask_app.after_request
    def _tag_response(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    return flask_app
