"""The Celery app, its signals, and the process-wide services it uses.

Reading settings and configuring logging happen here, in the entry point; the
services (database, Redis, provider clients) are built lazily, once per process,
so prefork children never share a connection with their parent.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, signals

from celeriac.services import Services
from config.celery import celery_config
from config.logging import configure_logging
from config.settings import Settings

settings = Settings()
app = Celery("celeriac")
app.conf.update(celery_config(settings))
app.conf.include = ["tasks.steps", "tasks.periodic", "tasks.webhooks"]

_services: Services | None = None


def services() -> Services:
    global _services
    if _services is None:
        _services = Services(settings)
        from tasks.webhooks import enqueue_webhook  # imports this module: wire it late

        _services.loop.on_webhook = enqueue_webhook
    return _services


def _secrets() -> list[str]:
    return [k for k in (settings.provider_key("anthropic"), settings.provider_key("openai")) if k]


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings.log_level, _secrets())


@signals.worker_process_init.connect
def _fresh_services_in_child(**_: Any) -> None:
    # A forked child must not reuse its parent's sockets.
    global _services
    _services = None


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
