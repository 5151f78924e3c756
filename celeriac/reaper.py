"""Housekeeping that keeps accepted work moving and the store bounded.

- Steps whose lease ran out (their worker died mid-step) are dispatched again; the
  broker's visibility timeout is only a backstop.
- Pending steps never sent (their sender died between commit and send) are sent
  after 15 s; sent steps that never started after 30 s are sent again (their
  message may have died in a killed worker's hands); the claim makes a duplicate
  harmless.
- Finished runs older than the retention period are deleted.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import delete, select, update

from celeriac.budget.keeper import BudgetKeeper
from celeriac.budget.ledger import ledger_cost
from celeriac.clock import utcnow
from celeriac.loop import Dispatch, deadline_error, finish_run
from celeriac.observer import RunReport
from celeriac.priority import priority_from_level
from celeriac.store import Database, Run, Step
from celeriac.store.schema import TERMINAL_STATUSES

log = structlog.get_logger("celeriac.reaper")


def mark_sent(db: Database, step_ids: list[str]) -> None:
    """Record that these steps' messages reached the broker."""
    if step_ids:
        with db.session() as s:
            s.execute(update(Step).where(Step.id.in_(step_ids)).values(sent_at=utcnow()))


def reap(
    db: Database,
    *,
    stale_pending_s: float = 30.0,
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
                ((Step.status == "running") & (Step.lease_until < now))
                | (
                    # Sent but not started for a while: its message may have died in a
                    # killed worker's hands (unacked until the visibility timeout). A
                    # re-send marks it sent again, so a backlog is re-sent at most once
                    # per 30 s, and a duplicate is dropped at its claim.
                    (Step.status == "pending")
                    & (Step.deliveries == 0)
                    & (Step.sent_at < now - timedelta(seconds=stale_pending_s))
                )
                | (
                    (Step.status == "pending")
                    & Step.sent_at.is_(None)
                    & (Step.created_at < now - timedelta(seconds=unsent_after_s))
                )
            )
            .limit(limit)
        ).all()
        for step, run in rows:
            if step.status == "running":
                # Left running: the claim that takes it over counts the recovery and
                # dead-letters a step that keeps killing its workers.
                log.warning("step_lease_expired", run_id=run.id, step=step.id)
            priority = priority_from_level(run.priority_level)
            dispatch.append(Dispatch(step.id, step.kind, priority.queue, priority.level))
    return dispatch


def cleanup(db: Database, *, retention_days: int) -> int:
    cutoff = utcnow() - timedelta(days=retention_days)
    with db.session() as s:
        old = list(
            s.scalars(
                select(Run.id).where(
                    Run.status.in_(TERMINAL_STATUSES), Run.finished_at < cutoff
                )
            )
        )
        if old:
            s.execute(delete(Step).where(Step.run_id.in_(old)))
            s.execute(delete(Run).where(Run.id.in_(old)))
    if old:
        log.info("retention_cleanup", deleted_runs=len(old), retention_days=retention_days)
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
            .where(Run.status.not_in(TERMINAL_STATUSES))
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
