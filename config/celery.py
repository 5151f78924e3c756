"""Celery configuration shared by the worker (``tasks``) and the web app, which
enqueues first steps by name. A plain dict: importing it connects to nothing."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue  # type: ignore[attr-defined]

from celeriac.execution.priority import QUEUES
from config.settings import Settings

LLM_STEP = "celeriac.llm_step"
TOOL_STEP = "celeriac.tool_step"
REAP = "celeriac.reap"
CLEANUP = "celeriac.cleanup"
WEBHOOK = "celeriac.webhook"
WEBHOOK_SWEEP = "celeriac.webhook_sweep"
REMEMBER = "celeriac.remember_run"


def native_priorities(broker_url: str) -> bool:
    """RabbitMQ has native message priorities (9 = most urgent). Redis only emulates
    them, with the opposite order and ahead of the queue order, so on Redis the
    three queues alone carry priority and messages are sent without one."""
    return broker_url.split(":", 1)[0] in ("amqp", "amqps", "pyamqp")


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.effective_broker_url
    amqp = native_priorities(broker)
    exchange = Exchange("celeriac", type="direct")  # type: ignore[no-untyped-call]
    # On RabbitMQ each queue also has native priorities (x-max-priority).
    arguments = {"x-max-priority": 10} if amqp else None
    queues = [
        Queue(q, exchange, routing_key=q, queue_arguments=arguments)  # type: ignore[no-untyped-call]
        for q in QUEUES
    ]
    return {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        # Results live in our store; a Celery result backend would only cost
        # throughput (FIELD-NOTES: 0.35x with a Redis backend).
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_queues": queues,
        "task_default_queue": "default",
        "task_default_exchange": "celeriac",
        "task_default_routing_key": "default",
        # At-least-once: ack after the step recorded its outcome; requeue when the
        # worker process dies; take one message at a time so priorities hold.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": not amqp,
        "broker_transport_options": {
            # Consume high, then default, then low: a fixed order, not round robin.
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
        },
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            # A reap that waited long is dropped: while no worker consumes, beat's
            # sends pile up, and a worker coming back would run them all (they
            # queue behind nothing but busy threads, so a few periods is plenty).
            "reap-stale-steps": {"task": REAP, "schedule": settings.reap_interval_s,
                                 "options": {"queue": "high", "expires": max(
                                     10.0, 3 * settings.reap_interval_s)}},
            "cleanup-old-runs": {"task": CLEANUP, "schedule": 3600.0, "options": {"queue": "low"}},
            "sweep-webhooks": {"task": WEBHOOK_SWEEP, "schedule": 30.0,
                               "options": {"queue": "default"}},
        },
    }
