"""The step tasks. Thin, like views: claim/call/record lives in the core loop.

Retries go through Celery (``Task.retry`` with a countdown); the core decides the
countdown and when to stop: exponential backoff 1, 2, 4, 8 s with jitter and a cap
per model, a larger ``retry-after`` wins, then the next model of the chain
(``celeriac.gateway.retry``). Celery's per-message retry counter cannot express "per model",
so ``max_retries`` is left unlimited here and the core's policy bounds the attempts.
Permanent errors fail the run at once.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from celeriac.errors import CeleriacError, Unavailable
from celeriac.execution.claims import Outcome
from celeriac.gateway.retry import RetryLater
from config.celery import LLM_STEP, TOOL_STEP
from tasks.dispatch import send_steps
from tasks.worker import app, services

log = structlog.get_logger("tasks.steps")

# Far below the broker's visibility timeout (1 h), so a waiting message is never
# redelivered while its countdown runs.
MAX_COUNTDOWN_S = 600
# Infrastructure errors (store or Redis down) retry for a long while with capped
# backoff: an outage must not fail accepted tasks.
INFRA_RETRIES = 500


class StepTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = None  # bounded by the core's retry policy, per model (see above)

    def run_step(self, step_id: str, execute: Any) -> str:
        loop = services().loop
        try:
            outcome: Outcome = execute(step_id)
        except RetryLater as later:
            countdown = min(MAX_COUNTDOWN_S, later.countdown_s)
            log.info("step_retry", step=step_id, reason=later.reason,
                     countdown_s=round(countdown, 3))
            try:
                loop.requeued(step_id, countdown)
            except Exception as exc:  # the retry still goes out; only its watch is lost
                log.warning("step_requeue_unrecorded", step=step_id, error=repr(exc))
            raise self.retry(countdown=countdown) from None
        except Unavailable as exc:  # an outage, even in the core's words, is retried
            return self.retry_infrastructure(step_id, exc)
        except CeleriacError as exc:
            log.warning("step_failed", step=step_id, code=exc.code, error=exc.message)
            loop.fail_step(step_id, exc)
            return "failed"
        except Exception as exc:
            return self.retry_infrastructure(step_id, exc)
        if outcome.note in ("duplicate", "busy"):
            kind = "llm" if self.name == LLM_STEP else "tool"
            services().metrics.count("duplicate_delivery", {"kind": kind, "outcome": outcome.note})
        if outcome.dispatch:
            send_steps(app, outcome.dispatch, services().db)
        services().failpoints.hit("before_ack", step_id)
        return outcome.note


    def retry_infrastructure(self, step_id: str, exc: Exception) -> str:
        """Infrastructure trouble (database, Redis, a lock timeout): retry with capped
        backoff, then fail the run loudly. The step's outcome was not committed, so
        the retry runs it again from its journal and ledger: nothing is lost."""
        failures = int(self.request.retries or 0)
        if failures >= INFRA_RETRIES:
            log.exception("step_crashed", step=step_id)
            services().loop.fail_step(
                step_id, CeleriacError(f"internal error: {type(exc).__name__}"))
            return "failed"
        log.warning("step_error_retrying", step=step_id, error=repr(exc))
        raise self.retry(countdown=min(60, 2 ** min(failures, 6))) from None


@app.task(bind=True, base=StepTask, name=LLM_STEP)
def llm_step(self: StepTask, step_id: str) -> str:
    return self.run_step(step_id, services().loop.run_llm_step)


@app.task(bind=True, base=StepTask, name=TOOL_STEP)
def tool_step(self: StepTask, step_id: str) -> str:
    return self.run_step(step_id, services().loop.run_tool_step)
