"""The web app's side of the broker: enqueue steps by name, revoke them on
cancellation. It never imports ``tasks``: the two sides share only names."""

from __future__ import annotations

from celery import Celery

from celeriac.queues import message_headers
from config.celery import LLM_STEP, WEBHOOK, celery_config, native_priorities
from config.settings import Settings


class StepQueue:
    def __init__(self, settings: Settings):
        self.celery = Celery("celeriac-web")
        self.celery.conf.update(celery_config(settings))
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

    def ping_broker(self) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
