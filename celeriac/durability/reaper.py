"""Housekeeping that keeps accepted work moving and the store bounded.

- Steps whose lease ran out (their worker died mid-step) are dispatched again at once
  (then with backoff while unclaimed), to the queue workers read first; the broker's
  visibility timeout is only a backstop.
- Pending steps never sent (their sender died between commit and send) are sent
  after 15 s, to the queue workers read first too; sent steps that never started
  after 30 s are sent again (their message may have died in a killed worker's
  hands), and again with backoff (each copy waits as long as the step had waited
  before it), so a backlog is not multiplied; the claim makes a duplicate harmless.
- Finished runs older than the retention period are deleted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, or_, select, update

from celeriac.accounting.keeper import BudgetKeeper
from celeriac.accounting.ledger import ledger_cost
from celeriac.clock import aware, utcnow
from celeriac.execution.claims import Dispatch, deadline_error, finish_run
from celeriac.execution.priority import QUEUES, priority_from_level
from celeriac.observability.observer import RunReport
from celeriac.store import Database, Run, Step, Thread
from celeriac.store.schema import TERMINAL_STATUSES, MemoryChunk

log = structlog.get_logger("celeriac.durability.reaper")


def mark_sent(db: Database, step_ids: list[str]) -> None:
    """Record that these steps' messages reached the broker."""
    if step_ids:
        with db.session() as s:
            s.execute(update(Step).where(Step.id.in_(step_ids)).values(sent_at=utcnow()))


def reap(
    db: Database,
    *,
    stale_pending_s: float = 30.0,
    recovery_resend_s: float = 10.0,
    unsent_after_s: float = 15.0,
    limit: int = 500,
) -> list[Dispatch]:
    now = utcnow()
    dispatch: list[Dispatch] = []
    with db.reader() as s:
        rows = s.execute(
            select(Step, Run)
            .join(Run, Run.id == Step.run_id)
            .where(Run.status.not_in(TERMINAL_STATUSES))
            .where(
                (
                    # Its worker died (the lease ran out): sent again at once, then
                    # again (with backoff, below) while nobody claims it.
                    (Step.status == "running")
                    & (Step.lease_until < now)
                )
                | (
                    # Sent (or due after a retry countdown) but not started for a while:
                    # its message may have died in a killed worker's hands (unacked
                    # until the visibility timeout; a countdown lives only in the
                    # worker's memory), or it may be waiting behind a backlog (below).
                    (Step.status == "pending")
                    & (Step.sent_at < now - timedelta(seconds=stale_pending_s))
                )
                | (
                    (Step.status == "pending")
                    & Step.sent_at.is_(None)
                    & (Step.created_at < now - timedelta(seconds=unsent_after_s))
                )
            )
            # Never-sent steps first (NULL sorts differently across databases).
            .order_by(Step.sent_at.is_not(None), Step.sent_at)
            .limit(limit)
        ).all()
        for step, run in rows:
            floor = recovery_resend_s if step.status == "running" else stale_pending_s
            if not _due(step, now, floor):
                continue
            priority = priority_from_level(run.priority_level)
            queue = priority.queue
            if step.status == "running" or step.sent_at is None:
                # Its worker died mid-step, or its sender died before sending it:
                # either way its task was already under way, so it goes to the queue
                # every worker reads first rather than behind a backlog of tasks not
                # yet started (the chaos test measured 85 s at p99 before this, 60 s
                # being the promise). A running one is left running: the claim that
                # takes it over counts the recovery and dead-letters a step that
                # keeps killing its workers.
                if step.status == "running":
                    log.warning("step_lease_expired", run_id=run.id, step=step.id)
                else:
                    log.warning("step_never_sent", run_id=run.id, step=step.id)
                queue = QUEUES[0]
            dispatch.append(Dispatch(step.id, step.kind, queue, priority.level))
    return dispatch


def resend_orphans(db: Database, orphans: dict[str, list[str]]) -> list[Dispatch]:
    """Steps a dead worker held (``celeriac.durability.holdings``), to send again now: those
    still pending in a live run. Running ones come back through their lease. A held
    retry whose countdown died with the worker goes now rather than at its due time:
    an early retry is harmless (the limiter, the breaker and the claim's checks all
    apply again), a late one is what this exists to avoid."""
    held = sorted({step_id for steps in orphans.values() for step_id in steps})
    if not held:
        return []
    dispatch: list[Dispatch] = []
    with db.reader() as s:
        rows = s.execute(
            select(Step, Run)
            .join(Run, Run.id == Step.run_id)
            .where(Step.id.in_(held), Step.status == "pending")
            .where(Run.status.not_in(TERMINAL_STATUSES))
        ).all()
        for step, run in rows:
            log.warning("step_orphaned", run_id=run.id, step=step.id,
                        workers=[n for n, ids in orphans.items() if step.id in ids])
            level = priority_from_level(run.priority_level).level
            # To the queue every worker reads first: the task was already under way.
            dispatch.append(Dispatch(step.id, step.kind, QUEUES[0], level))
    # The caller marks them sent, so the stale-pending pass that follows does not
    # send a second copy right behind these.
    return dispatch


def _due(step: Step, now: datetime, floor_s: float) -> bool:
    """Whether to send a copy of this step now. A step not sent since it was lost
    (never sent, or running on a worker whose lease ran out) is due at once. A copy
    already sent may simply be waiting behind a backlog, which the store cannot tell
    from a copy lost in a dead worker's hands: so copies back off, each waiting at
    least as long as the step had waited before it, and at least ``floor_s``: 30 s
    for a queued step (30 s, 30 s, 60 s, 2 min...), 10 s for a recovered one, whose
    copy goes to the queue read first and is claimed within a second unless it too
    died with a worker (the chaos test saw one lost twice that way: 68 s at 30 s).
    Re-sending every 30 s instead multiplied a backlog by one copy per step every
    30 s, slowing the very recovery it waited for (the chaos test found steps with
    12 queued copies and queues of 1,500 copies)."""
    if step.sent_at is None:
        return True
    sent = aware(step.sent_at)
    if step.status == "running":
        lost_at = aware(step.lease_until) if step.lease_until is not None else sent
        if sent < lost_at:
            return True  # not sent since its worker died
        origin = lost_at
    else:
        origin = aware(step.created_at)
    waited = (now - sent).total_seconds()
    return waited >= max(floor_s, (sent - origin).total_seconds())


def cleanup(db: Database, *, retention_days: int) -> int:
    """Delete what ended more than ``retention_days`` ago. A thread goes as a whole,
    once every one of its turns is that old: deleting its early turns alone would
    change what its later ones remember."""
    cutoff = utcnow() - timedelta(days=retention_days)
    with db.session() as s:
        recent = (
            select(Run.thread_id)
            .where(Run.thread_id.is_not(None))
            .where(or_(Run.status.not_in(TERMINAL_STATUSES), Run.finished_at >= cutoff))
        )
        threads = list(
            s.scalars(
                select(Thread.id).where(Thread.updated_at < cutoff, Thread.id.not_in(recent))
            )
        )
        old = list(
            s.scalars(
                select(Run.id).where(
                    Run.status.in_(TERMINAL_STATUSES),
                    Run.finished_at < cutoff,
                    or_(Run.thread_id.is_(None), Run.thread_id.in_(threads)),
                )
            )
        )
        if old:
            s.execute(delete(Step).where(Step.run_id.in_(old)))
            s.execute(delete(Run).where(Run.id.in_(old)))
        if threads:
            s.execute(delete(Thread).where(Thread.id.in_(threads)))
        # What recall remembers of them goes too: retention means deletion.
        if old or threads:
            s.execute(
                delete(MemoryChunk).where(
                    or_(MemoryChunk.run_id.in_(old), MemoryChunk.thread_id.in_(threads))
                )
            )
    if old or threads:
        log.info("retention_cleanup", deleted_runs=len(old), deleted_threads=len(threads),
                 retention_days=retention_days)
    return len(old)


def settle_expired_reservations(db: Database, keeper: BudgetKeeper) -> int:
    """Reservations whose step crashed: settle to what the ledger recorded, else 0."""
    settled = 0
    for reservation_id in keeper.expired_reservations():
        where = keeper.reservation(reservation_id)
        if where is None:
            continue
        day, tenant = where
        actual = ledger_cost(db, reservation_id) or 0
        if keeper.settle(reservation_id, day=day, tenant=tenant, actual_nanos=actual):
            settled += 1
            log.warning("budget_reservation_expired", reservation=reservation_id,
                        actual_nanos=actual)
    return settled


def end_overdue_runs(db: Database, *, grace_s: float = 30.0, limit: int = 200) -> list[RunReport]:
    """Runs past their wall-clock deadline (plus a grace for the step in flight) are
    failed here, whatever their steps are doing: no run stays running forever. Their
    open steps are cancelled; the broker's copies find the run ended and skip."""
    now = utcnow()
    reports: list[RunReport] = []
    with db.session() as s:
        overdue = s.scalars(
            select(Run)
            # A queued run's limit has not started (it counts from admission).
            .where(Run.status == "running")
            .where(Run.deadline_at < now - timedelta(seconds=grace_s))
            .limit(limit)
        ).all()
        for run in overdue:
            for step in run.steps:
                if step.status in ("pending", "running"):
                    step.status, step.finished_at = "cancelled", now
            reports.append(finish_run(run, now, "failed", error=deadline_error(run)))
            log.warning("run_deadline_exceeded", run_id=run.id)
    return reports
