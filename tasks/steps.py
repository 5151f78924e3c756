"""The step tasks. Thin, like views: claim/call/record lives in the core loop.

Retries are Celery's: exponential backoff with jitter and a cap, where a larger
``retry-after`` from the provider wins. Permanent errors fail the run at once.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from celeriac.errors import CeleriacError, TransientProviderError
from celeriac.loop import Outcome
from config.celery import LLM_STEP, TOOL_STEP
from tasks.dispatch import send_steps
from tasks.worker import app, services

log = structlog.get_logger("tasks.steps")

RETRY_BACKOFF_S = 1
RETRY_BACKOFF_MAX_S = 30
MAX_RETRIES = 4


class StepTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = MAX_RETRIES
    retry_backoff = RETRY_BACKOFF_S
    retry_backoff_max = RETRY_BACKOFF_MAX_S
    retry_jitter = True

    def run_step(self, step_id: str, execute: Any) -> str:
        loop = services().loop
        try:
            outcome: Outcome = execute(step_id)
        except TransientProviderError as exc:
            if self.request.retries >= self.max_retries:
                loop.fail_step(step_id, exc)
                return "failed"
            backoff = get_exponential_backoff_interval(
                factor=self.retry_backoff,
                retries=self.request.retries,
                maximum=self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
            countdown = max(backoff, exc.retry_after_s or 0)
            log.info("step_retry", step=step_id, code=exc.code, countdown_s=countdown)
            raise self.retry(exc=exc, countdown=countdown) from None
        except CeleriacError as exc:
            log.warning("step_failed", step=step_id, code=exc.code, error=exc.message)
            loop.fail_step(step_id, exc)
            return "failed"
        except Exception as exc:
            # Infrastructure trouble (database, Redis): retry, then fail the run loudly.
            if self.request.retries >= self.max_retries:
                log.exception("step_crashed", step=step_id)
                loop.fail_step(step_id, CeleriacError(f"internal error: {type(exc).__name__}"))
                return "failed"
            log.warning("step_error_retrying", step=step_id, error=repr(exc))
            raise self.retry(exc=exc, countdown=2 ** self.request.retries) from None
        if outcome.dispatch:
            send_steps(app, outcome.dispatch)
        return outcome.note


@app.task(bind=True, base=StepTask, name=LLM_STEP)
def llm_step(self: StepTask, step_id: str) -> str:
    return self.run_step(step_id, services().loop.run_llm_step)


@app.task(bind=True, base=StepTask, name=TOOL_STEP)
def tool_step(self: StepTask, step_id: str) -> str:
    return self.run_step(step_id, services().loop.run_tool_step)
