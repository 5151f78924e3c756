"""Server-Sent Events of a task's status: one event per visible change.

The event id is the run's version, so a client that reconnects with
``Last-Event-ID`` gets only what changed since. The stream polls the store, which
is cheap (one primary-key read), and ends after the terminal status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue

from app.auth import current_tenant
from app.context import web
from app.schemas import parse_last_event_id
from celeriac.views import load_run_document, run_version

bp = Blueprint("events", __name__, url_prefix="/agent")

POLL_S = 0.2
HEARTBEAT_S = 15.0
MAX_STREAM_S = 600.0  # the client reconnects with Last-Event-ID after this


@bp.get("/events/<task_id>")
def events(task_id: str) -> ResponseReturnValue:
    db = web().services.db
    load_run_document(db, task_id, tenant=current_tenant())  # 404 before the stream starts
    last_seen = parse_last_event_id(request.headers.get("Last-Event-ID"),
                                    request.args.get("last_event_id"))

    def stream() -> Iterator[str]:
        seen = last_seen
        started = last_beat = time.monotonic()
        yield "retry: 1000\n\n"
        while time.monotonic() - started < MAX_STREAM_S:
            state = run_version(db, task_id)
            if state is None:
                return
            version, terminal = state
            if version > seen:
                doc = load_run_document(db, task_id)
                seen = int(doc["version"])
                yield f"id: {seen}\nevent: status\ndata: {json.dumps(doc)}\n\n"
                if doc["status"] in ("completed", "failed", "cancelled"):
                    yield "event: end\ndata: {}\n\n"
                    return
            elif terminal:
                yield "event: end\ndata: {}\n\n"
                return
            now = time.monotonic()
            if now - last_beat > HEARTBEAT_S:
                last_beat = now
                yield ": keep-alive\n\n"
            time.sleep(POLL_S)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
