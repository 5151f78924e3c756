"""Server-Sent Events of a task's status: one event per visible change.

The event id is the run's version, so a client that reconnects with
``Last-Event-ID`` gets only what changed since. A stream holds no thread of its own
while it waits: it sleeps on its subscription to the process's run watcher
(app/streams.py), which polls the store once for all streams and wakes this one
when its run changes, or when the API key it was opened with is revoked (then the
stream says so in an ``error`` event and ends). It ends after the terminal status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from app.auth import current_key_id, current_tenant
from app.context import web
from app.schemas import parse_last_event_id
from celeriac.readmodels.documents import load_run_document

bp = Blueprint("events", __name__, url_prefix="/agent")

HEARTBEAT_S = 15.0
MAX_STREAM_S = 600.0  # the client reconnects with Last-Event-ID after this
TERMINAL = ("completed", "failed", "cancelled")


def _event(dumps: Callable[[object], str], name: str, data: object,
           event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {dumps(data)}\n\n"


@bp.get("/events/<task_id>")
def events(task_id: str) -> ResponseReturnValue:
    context = web()
    db = context.services.db
    first = load_run_document(db, task_id, tenant=current_tenant())  # 404 before the stream
    last_seen = parse_last_event_id(request.headers.get("Last-Event-ID"),
                                    request.args.get("last_event_id"))
    subscription = context.run_watcher.subscribe(task_id, current_key_id())
    # The app's JSON provider, taken now (the stream runs outside the app context):
    # strict JSON, as every answer, even for a value stored before strict input.
    dumps = current_app.json.dumps

    def stream() -> Iterator[str]:
        try:
            seen = last_seen
            doc: dict[str, object] | None = first
            started = last_beat = time.monotonic()
            yield "retry: 1000\n\n"
            while True:
                if subscription.revoked:
                    yield _event(dumps, "error", {"code": "unauthorized",
                                           "message": "the API key was revoked"})
                    return
                if subscription.gone:
                    return
                if doc is None and subscription.version > seen:
                    doc = load_run_document(db, task_id)
                if doc is not None:
                    version = int(str(doc["version"]))
                    if version > seen:
                        seen = version
                        yield _event(dumps, "status", doc, seen)
                    if doc["status"] in TERMINAL:
                        yield _event(dumps, "end", {})
                        return
                    doc = None
                now = time.monotonic()
                left = MAX_STREAM_S - (now - started)
                if left <= 0:
                    return
                if now - last_beat >= HEARTBEAT_S:
                    last_beat = now
                    yield ": keep-alive\n\n"
                if subscription.woken.wait(min(left, HEARTBEAT_S - (now - last_beat))):
                    subscription.woken.clear()
                    if subscription.terminal and subscription.version <= seen:
                        doc = load_run_document(db, task_id)  # ended without a new version
        finally:
            context.run_watcher.unsubscribe(subscription)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
