"""The Celery app, its signals, and the process-wide services it uses.

Reading settings and configuring logging happen here, in the entry point; the
services (database, Redis, provider clients) are built lazily, once per process,
so prefork children never share a connection with their parent.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import Celery, signals

from celeriac.durability.holdings import Holdings
from celeriac.execution.claims import Dispatch
from celeriac.redaction import Redactor
from celeriac.services import Services
from config.celery import LLM_STEP, TOOL_STEP, celery_config
from config.logging import configure_logging
from config.settings import Settings
from config.tracing import configure_tracing

settings = Settings()
app = Celery("celeriac")
app.conf.update(celery_config(settings))
app.conf.include = ["tasks.steps", "tasks.periodic", "tasks.webhooks", "tasks.memory"]

_services: Services | None = None


def _start_tracing() -> None:
    if not configure_tracing("celeriac-worker", settings.tracing_mode):
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    # Steps are enqueued by name (send_task), which the instrumentation's publish
    # hooks cannot close cleanly; the trace context is injected by message_headers().
    signals.before_task_publish.disconnect(instrumentor._trace_before_publish)
    signals.after_task_publish.disconnect(instrumentor._trace_after_publish)


_start_tracing()


def services() -> Services:
    global _services
    if _services is None:
        _services = Services(settings)
        # These import this module: wire them late.
        from tasks.memory import enqueue_remember
        from tasks.webhooks import enqueue_webhook

        _services.loop.on_webhook = enqueue_webhook
        _services.loop.on_completed = enqueue_remember
        _services.loop.send_next_turn = _send_next_turn
    return _services


def _send_next_turn(step: Dispatch) -> None:
    from tasks.dispatch import send_steps

    assert _services is not None
    send_steps(app, [step], _services.db)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # The worker and beat alike: every secret of the settings is scrubbed from logs.
    configure_logging(settings.log_level, Redactor(settings.secret_values()))


@signals.worker_process_init.connect
def _fresh_services_in_child(**_: Any) -> None:
    # A forked child must not reuse its parent's sockets, nor its span exporter thread.
    global _services
    _services = None
    configure_tracing("celeriac-worker", settings.tracing_mode)


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, args: Any = None,
                       **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    step = args[0] if args else None
    run_id = step.split("-")[0] if isinstance(step, str) else None
    structlog.contextvars.bind_contextvars(
        celery_task_id=task_id, task=getattr(task, "name", None), step=step, task_id=run_id
    )


@signals.task_postrun.connect
def _unbind_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


# -- what this worker holds (celeriac.durability.holdings) ------------------------------------

_STEP_TASKS = (LLM_STEP, TOOL_STEP)
_holdings: Holdings | None = None
_heartbeat_stop = threading.Event()


def _holdings_for(node: str | None) -> Holdings | None:
    global _holdings
    if not node:
        return None
    if _holdings is None or _holdings.node != node:
        _holdings = Holdings(services().redis, node, alive_ttl_s=settings.step_lease_s)
    return _holdings


def _beat_forever(holdings: Holdings) -> None:
    # A third of the liveness TTL, as the step leases beat: one missed beat is not
    # yet death.
    interval = max(0.5, holdings.alive_ttl_s / 3)
    while not _heartbeat_stop.is_set():
        try:
            holdings.beat()
        except Exception as exc:  # Redis away: the next beat tries again
            structlog.get_logger("tasks.worker").warning("holdings_beat_failed",
                                                         error=repr(exc))
        try:
            services().epoch.check()  # did Redis come back empty? (celeriac.durability.epoch)
        except Exception as exc:
            structlog.get_logger("tasks.worker").warning("epoch_check_failed",
                                                         error=repr(exc))
        _heartbeat_stop.wait(interval)


@signals.worker_ready.connect
def _start_holdings_heartbeat(sender: Any = None, **_: Any) -> None:
    holdings = _holdings_for(getattr(sender, "hostname", None))
    if holdings is not None:
        threading.Thread(target=_beat_forever, args=(holdings,),
                         name="celeriac-holdings-heartbeat", daemon=True).start()


@signals.task_received.connect
def _hold_step(request: Any = None, **_: Any) -> None:
    # In the process that took the message from the broker (the prefork parent, or
    # the only process of the threads and gevent pools), before it waits anywhere.
    if request is None or request.name not in _STEP_TASKS:
        return
    holdings = _holdings_for(getattr(request, "hostname", None))
    if holdings is not None:
        try:
            holdings.hold(request.id)
        except Exception as exc:  # without the note, only the slower paths recover it
            structlog.get_logger("tasks.worker").warning("holdings_write_failed",
                                                         step=request.id, error=repr(exc))


def _release_step(step_id: str, name: str | None, node: str | None) -> None:
    if name not in _STEP_TASKS:
        return
    holdings = _holdings_for(node)
    if holdings is not None:
        try:
            holdings.release(step_id)
        except Exception as exc:  # a stale note costs at most one harmless copy
            structlog.get_logger("tasks.worker").warning("holdings_release_failed",
                                                         step=step_id, error=repr(exc))


@signals.task_postrun.connect
def _release_finished_step(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is not None and task is not None:
        _release_step(task_id, task.name, getattr(task.request, "hostname", None))


@signals.task_revoked.connect
def _release_revoked_step(request: Any = None, **_: Any) -> None:
    if request is not None:
        _release_step(request.id, request.name, getattr(request, "hostname", None))


@signals.worker_shutdown.connect
def _retire_holdings(**_: Any) -> None:
    # A warm shutdown: the broker gets the unfinished messages back by itself.
    _heartbeat_stop.set()
    if _holdings is not None:
        try:
            _holdings.retire()
        except Exception as exc:  # the reaper re-sends them later: harmless copies
            structlog.get_logger("tasks.worker").warning("holdings_retire_failed",
                                                         error=repr(exc))
