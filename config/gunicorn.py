"""gunicorn's settings for the web tier, read as ``gunicorn -c python:config.gunicorn``.

**Why gevent workers.** gunicorn's thread workers give every connection a thread
while its request is read and answered: about seventy slow clients (a dribbled
header, a partial body) or open event streams stalled the whole tier. A gevent
worker gives each connection a greenlet instead, so thousands of slow or idle
connections and event streams cost memory, not the server; Flask's own docs point
long-lived responses at gevent, and psycopg 3, redis-py and kombu cooperate with
its patched sockets. The app itself is unchanged: gevent patches ``threading`` and
``socket`` before the app is imported (the app is not preloaded in the master).

**Errors gunicorn answers itself** (a malformed request line, a header or URL too
long: 400, 414, 431) are JSON like every other error here, not gunicorn's HTML page.
A request whose declared body is larger than the API accepts is answered 413 by the
app without reading the body; its connection is then closed (``Connection: close``),
since whatever the client sends next on it would be read as that body's rest.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any

from config.settings import load_settings

_settings = load_settings()

worker_class = "gevent"
# One process per core by default (CELERIAC_WEB_WORKERS overrides): a process uses
# one core, whatever number of connections it holds.
workers = _settings.web_workers or max(2, os.cpu_count() or 1)
# Connections one worker holds at once (slow clients and event streams included).
worker_connections = _settings.web_worker_connections
# A worker that has not checked in for this long is killed and replaced; under
# gevent, requests do not block the check-in.
timeout = 120
graceful_timeout = 30
keepalive = 5
backlog = 4096
accesslog = "-"
# Headers and request lines past these are refused (431, 414) before the app runs.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


def _json_error_page(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer, as JSON: the same ``{"error": {...}}`` shape."""
    code = {400: "bad_request", 403: "forbidden", 414: "uri_too_long",
            417: "expectation_failed", 431: "header_too_large",
            501: "not_implemented"}.get(status_int, "server_error")
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    from gunicorn.util import write_nonblock

    write_nonblock(sock, head.encode("latin-1") + body)


def on_starting(server: Any) -> None:
    from gunicorn import util

    # gunicorn's workers call util.write_error by name for every error they answer
    # themselves; without it this hook would silently leave HTML pages in place.
    if not callable(getattr(util, "write_error", None)):
        raise SystemExit("gunicorn.util.write_error is gone: cannot make its errors JSON")
    util.write_error = _json_error_page
    # Every open connection is a file descriptor: raise the soft limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pre_request(worker: Any, req: Any) -> None:
    declared = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
    if declared is not None and declared.isdigit() and int(declared) > _settings.max_body_bytes:
        req.must_close = True  # answered 413 unread: nothing after it on this connection
