"""The Prometheus exporter: its own process, serving on :9808 what every worker
process on every host recorded in Redis (see celeriac.observability.metrics), plus live gauges.

Run: ``python -m app.exporter [--host 127.0.0.1] [--port 9808]``. Outside dev mode
(``CELERIAC_DEV_MODE=0``) it requires ``CELERIAC_METRICS_TOKEN`` and answers 401 to
scrapes without ``Authorization: Bearer <token>`` (Prometheus: ``authorization``
in the scrape config).
"""

from __future__ import annotations

import argparse
import hmac
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import REGISTRY
from prometheus_client.exposition import ThreadingWSGIServer

from celeriac.observability.gauges import live_gauges
from celeriac.observability.metrics import RedisCollector
from celeriac.redaction import Redactor
from celeriac.services import Services
from config.logging import configure_logging
from config.settings import Settings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def protected(app: WSGIApp, token: str) -> WSGIApp:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"a bearer token is required\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_app(settings: Settings, registry: CollectorRegistry = REGISTRY) -> WSGIApp:
    services = Services(settings, request_timeouts=True)
    registry.register(RedisCollector(services.redis, lambda: live_gauges(services)))
    app: WSGIApp = make_wsgi_app(registry)
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if not settings.dev_mode and not token:
        raise SystemExit("exporter: set CELERIAC_METRICS_TOKEN (required outside dev mode)")
    return protected(app, token) if token else app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.exporter", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9808)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, Redactor(settings.secret_values()))
    app = build_app(settings)
    server = make_server(args.host, args.port, app, ThreadingWSGIServer, _QuietHandler)
    print(f"exporter serving http://{args.host}:{args.port}/metrics", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
