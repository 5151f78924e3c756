"""The web app's side of the broker: enqueue steps by name, revoke them on
cancellation. It never imports ``tasks``: the two sides share only names."""

from __future__ import annotations

from celery import Celery

from celeriac.observability.queue_depth import message_headers
from config.celery import LLM_STEP, WEBHOOK, celery_config, native_priorities
from config.settings import Settings


class StepQueue:
    def __init__(self, settings: Settings):
        self.celery = Celery("celeriac-web")
        config = celery_config(settings)
        # A request must not hang on a dead or hung broker: bounded connects and
        # reads, and few publish retries; past them the request answers 503.
        config["broker_transport_options"] = {
            **config["broker_transport_options"],
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "socket_timeout": settings.redis_socket_timeout_s,
        }
        config["broker_connection_timeout"] = settings.redis_connect_timeout_s
        config["task_publish_retry_policy"] = {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
        }
        self.celery.conf.update(config)
        self.native_priorities = native_priorities(settings.effective_broker_url)

    def send_llm_step(self, step_id: str, *, queue: str, level: int) -> None:
        self.celery.send_task(
            LLM_STEP,
            args=[step_id],
            task_id=step_id,
            queue=queue,
            routing_key=queue,
            priority=level if self.native_priorities else None,
            headers=message_headers(),
        )

    def send_webhook(self, delivery_id: str) -> None:
        self.celery.send_task(WEBHOOK, args=[delivery_id], queue="default")

    def revoke(self, step_ids: list[str]) -> None:
        if step_ids:
            self.celery.control.revoke(step_ids)

    def ping_broker(self, timeout_s: float) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
