"""The Celery app, its signals, and the process-wide services it uses.

Reading settings and configuring logging happen here, in the entry point; the
services (database, Redis, provider clients) are built lazily, once per process,
so prefork children never share a connection with their parent.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, signals

from celeriac.claims import Dispatch
from celeriac.services import Services
from config.celery import celery_config
from config.logging import configure_logging
from config.settings import Settings
from config.tracing import configure_tracing

settings = Settings()
app = Celery("celeriac")
app.conf.update(celery_config(settings))
app.conf.include = ["tasks.steps", "tasks.periodic", "tasks.webhooks", "tasks.memory"]

_services: Services | None = None


def _start_tracing() -> None:
    if not configure_tracing("celeriac-worker", settings.tracing):
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


def _secrets() -> list[str]:
    return [k for k in (settings.provider_key("anthropic"), settings.provider_key("openai")) if k]


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings.log_level, _secrets())


@signals.worker_process_init.connect
def _fresh_services_in_child(**_: Any) -> None:
    # A forked child must not reuse its parent's sockets, nor its span exporter thread.
    global _services
    _services = None
    configure_tracing("celeriac-worker", settings.tracing)


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
