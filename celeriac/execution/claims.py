"""Claiming a step: the first of a step's three parts (see ``celeriac.execution.loop``).

A claim moves a step from pending to running under a lease, in one transaction
that also applies the rules a step must pass before it may start: the run's
deadline, the dead-letter limit on recoveries, the turns of one thread in order,
and the tenant's cap on running tasks. The helpers every part of a step uses to
finish a run and to dispatch successors live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celeriac.accounting.pricing import usd_to_nanos
from celeriac.clock import aware, utcnow
from celeriac.execution.priority import priority_from_level
from celeriac.execution.step_ids import llm_step_id
from celeriac.observability.observer import RunReport
from celeriac.store import Database, Run, Step
from celeriac.store.schema import TERMINAL_STATUSES

log = structlog.get_logger("celeriac.execution.loop")

# How long a first step waits before it asks again: a tenant at its running cap, or
# a thread whose earlier turn is still running. The latter is only a safety net: the
# turn that ends wakes the next one at once (``next_turn``).
DEFER_WAIT_S = {"tenant_at_capacity": 2.0, "thread_busy": 2.0}


@dataclass(frozen=True)
class Dispatch:
    """A step to enqueue: the task layer turns it into a Celery message."""

    step_id: str
    kind: str
    queue: str
    level: int


@dataclass
class Outcome:
    note: str  # executed | duplicate | busy | skipped | missing | deferred
    dispatch: list[Dispatch] = field(default_factory=list)
    reason: str = ""  # why a step was deferred


@dataclass
class Claim:
    """What a claimed step needs to run, read in the claim's transaction."""

    run_id: str
    turn: int
    name: str
    model: str
    max_tokens: int
    agent_ref: str
    tool_call_args: dict[str, object] | None
    kind: str = "llm"
    chain_index: int = 0
    fallback_reason: str | None = None
    tenant: str = "default"
    budget_nanos: int = 0
    spent_nanos: int = 0
    attempts: int = 0


def claim_step(
    db: Database,
    step_id: str,
    *,
    lease: timedelta,
    max_recoveries: int,
    tenant_max_running: int,
) -> tuple[Claim | None, Outcome, RunReport | None]:
    """Claim a step (pending -> running, under a lease) in one transaction.

    Returns the claim when the step is to run now, and otherwise why not (a
    duplicate, a deferral, ...). A run this ends (past its deadline, dead-lettered)
    comes back as a report for the caller to announce."""
    with db.session() as s:
        step = s.get(Step, step_id, with_for_update=True)
        if step is None:
            return None, Outcome("missing"), None
        run = s.get(Run, step.run_id, with_for_update=True)
        assert run is not None
        # Read the clock once the locks are held: a claim that waited behind
        # another transaction must not date itself before that one committed
        # (a run's started_at would precede the finish that made room for it).
        now = utcnow()
        step.deliveries += 1
        if step.status == "completed":
            # Redelivered after the outcome was recorded: only make sure the
            # successors were dispatched (a crash may have come in between).
            # Sending a pending successor twice is harmless: its claim is atomic.
            return None, Outcome("duplicate", successors(s, step)), None
        if step.status in ("failed", "skipped", "cancelled"):
            return None, Outcome("skipped"), None
        if run.terminal:
            step.status = "cancelled" if run.status == "cancelled" else "skipped"
            step.finished_at = now
            return None, Outcome("skipped"), None
        if step.status == "running" and step.lease_until and aware(step.lease_until) > now:
            return None, Outcome("busy"), None
        if (
            run.status != "queued"
            and run.deadline_at is not None
            and aware(run.deadline_at) < now
        ):
            step.status, step.finished_at = "failed", now
            error = deadline_error(run)
            step.error_code, step.error_message = error
            return None, Outcome("deadline"), finish_run(run, now, "failed", error=error)
        if step.status == "running":
            # Its worker died mid-step (the lease ran out): count it, and stop
            # a poison step from looping forever.
            step.recoveries += 1
            if step.recoveries > max_recoveries:
                error = (
                    "dead_letter",
                    f"step {step.id} was interrupted {step.recoveries} times "
                    f"(its worker died or hung each time); giving up",
                )
                step.status, step.finished_at = "failed", now
                step.error_code, step.error_message = error
                return None, Outcome("dead_letter"), finish_run(run, now, "failed", error=error)
        if run.status == "queued" and run.thread_seq > 1:
            if thread_busy(s, run):
                # Turns of one conversation never interleave: wait for the earlier ones.
                return None, Outcome("deferred", reason="thread_busy"), None
            # Under READ COMMITTED the check saw finishes committed after our clock
            # was read: date the start after them.
            now = utcnow()
        if run.status == "queued" and tenant_max_running > 0:
            # Two runs of one tenant starting at once must not both see room
            # under the cap: serialize starts per tenant (SQLite already does).
            db.serialize(s, f"tenant-start:{run.tenant}")
            running = (
                s.scalar(
                    select(func.count())
                    .select_from(Run)
                    .where(Run.tenant == run.tenant, Run.status == "running")
                )
                or 0
            )
            if running >= tenant_max_running:
                # The tenant is at its cap: this run waits its turn, queued.
                return None, Outcome("deferred", reason="tenant_at_capacity"), None
            now = utcnow()  # admitted now, after every finish the count saw
        step.status = "running"
        step.started_at = step.started_at or now
        step.lease_until = now + lease
        if run.status == "queued":
            run.status = "running"
            run.started_at = now
            if run.deadline_at is not None:
                # The wall-clock limit counts from the start: time spent queued behind
                # a backlog, a tenant's cap or an earlier turn of the thread is not the
                # task running away (submission dated it from creation).
                run.deadline_at = now + (aware(run.deadline_at) - aware(run.created_at))
            log.info("agent_started", run_id=run.id, agent=run.agent, model=run.model)
        touch(run, now)
        claim = Claim(
            run_id=run.id,
            turn=step.turn,
            name=step.name,
            model=run.model,
            max_tokens=run.max_tokens,
            agent_ref=f"{run.agent}@{run.agent_version}",
            tool_call_args=step.arguments,
            kind=step.kind,
            chain_index=step.chain_index,
            fallback_reason=step.fallback_reason,
            tenant=run.tenant,
            budget_nanos=usd_to_nanos(run.budget_usd),
            spent_nanos=run.cost_nanos,
            attempts=len(step.attempt_log or []),
        )
        return claim, Outcome("executed"), None


def touch(run: Run, now: object) -> None:
    run.updated_at = now  # type: ignore[assignment]
    run.version += 1


def finish_run(
    run: Run, now: object, status: str, error: tuple[str, str] | None = None
) -> RunReport:
    run.status = status
    run.finished_at = now  # type: ignore[assignment]
    run.pending_tools = 0
    if error is not None:
        run.error_code, run.error_message = error
    touch(run, now)
    latency = (aware(run.finished_at) - aware(run.created_at)).total_seconds()  # type: ignore[arg-type]
    return RunReport(
        run_id=run.id,
        agent=run.agent,
        model=run.model,
        status=status,
        total_steps=run.steps_done,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost_nanos=run.cost_nanos,
        latency_s=latency,
        error_code=run.error_code,
        webhook_url=run.webhook_url,
        thread_id=run.thread_id,
        thread_seq=run.thread_seq,
    )


def dispatch_for(step: Step, run: Run) -> Dispatch:
    priority = priority_from_level(run.priority_level)
    return Dispatch(step.id, step.kind, priority.queue, priority.level)


def successors(s: Session, step: Step) -> list[Dispatch]:
    """Pending successors of a completed step (re-dispatched after a crash)."""
    run = step.run
    if run.terminal:
        return []
    if step.kind == "llm":
        candidates = [st for st in run.steps if st.turn == step.turn and st.kind == "tool"]
    else:
        nxt = s.get(Step, llm_step_id(run.id, step.turn + 1))
        candidates = [nxt] if nxt is not None else []
    return [dispatch_for(st, run) for st in candidates if st.status == "pending"]


def deadline_error(run: Run) -> tuple[str, str]:
    start = run.started_at or run.created_at
    limit = (aware(run.deadline_at) - aware(start)).total_seconds()  # type: ignore[arg-type]
    return (
        "deadline_exceeded",
        f"the task ran past its wall-clock limit of {limit:.0f} s (max_duration_s)",
    )


def thread_busy(s: Session, run: Run) -> bool:
    """Whether an earlier turn of the run's thread has not ended yet."""
    earlier = s.scalar(
        select(func.count())
        .select_from(Run)
        .where(
            Run.thread_id == run.thread_id,
            Run.thread_seq < run.thread_seq,
            Run.status.not_in(TERMINAL_STATUSES),
        )
    )
    return bool(earlier)


def next_turn(db: Database, thread_id: str, after_seq: int) -> Dispatch | None:
    """The first step of the thread's next turn, when that turn is still waiting to
    start: a turn that ends wakes the one queued behind it, which would otherwise
    learn only at its next re-check (DEFER_WAIT_S["thread_busy"])."""
    with db.reader() as s:
        run = s.scalar(
            select(Run).where(
                Run.thread_id == thread_id,
                Run.thread_seq == after_seq + 1,
                Run.status == "queued",
            )
        )
        if run is None:
            return None
        first = s.get(Step, llm_step_id(run.id, 0))
        if first is None or first.status != "pending":
            return None
        return dispatch_for(first, run)
