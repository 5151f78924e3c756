"""Reading the ledger: what a day cost (to rebuild budget counters) and usage
reports per day, tenant and model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from celeriac.accounting.keeper import DaySpend, HeldReservation
from celeriac.accounting.pricing import nanos_to_usd
from celeriac.store import Database, LedgerEntry, Step


def day_spend(db: Database, day: str) -> DaySpend:
    with db.reader() as s:
        by_tenant = {
            tenant: int(total)
            for tenant, total in s.execute(
                select(LedgerEntry.tenant, func.sum(LedgerEntry.cost_nanos))
                .where(LedgerEntry.day == day)
                .group_by(LedgerEntry.tenant)
            )
        }
        held = [
            HeldReservation(str(r["id"]), str(r["tenant"]), int(r["amount"]))
            for r in s.scalars(
                select(Step.reservation).where(
                    Step.kind == "llm", Step.status == "running", Step.reservation.is_not(None)
                )
            )
            if r and r.get("day") == day
        ]
    return DaySpend(by_tenant=by_tenant, in_flight=held)


def ledger_cost(db: Database, reservation_id: str) -> int | None:
    with db.reader() as s:
        value = s.scalar(
            select(LedgerEntry.cost_nanos).where(LedgerEntry.reservation_id == reservation_id)
        )
        return None if value is None else int(value)


def usage_report(
    db: Database, *, since: str, until: str, tenant: str | None
) -> dict[str, Any]:
    """Spend and tokens per day, per tenant and per model, days inclusive."""
    with db.reader() as s:
        query = select(
            LedgerEntry.day,
            LedgerEntry.tenant,
            LedgerEntry.model,
            func.count(),
            func.sum(LedgerEntry.input_tokens),
            func.sum(LedgerEntry.output_tokens),
            func.sum(LedgerEntry.cost_nanos),
        ).where(LedgerEntry.day >= since, LedgerEntry.day <= until)
        if tenant is not None:
            query = query.where(LedgerEntry.tenant == tenant)
        rows = s.execute(
            query.group_by(LedgerEntry.day, LedgerEntry.tenant, LedgerEntry.model).order_by(
                LedgerEntry.day, LedgerEntry.tenant, LedgerEntry.model
            )
        ).all()
    items = [
        {
            "day": day,
            "tenant": tenant_name,
            "model": model,
            "calls": int(calls),
            "input_tokens": int(inp or 0),
            "output_tokens": int(out or 0),
            "cost_usd": nanos_to_usd(int(cost or 0)),
        }
        for day, tenant_name, model, calls, inp, out, cost in rows
    ]
    total = sum(int(row[6] or 0) for row in rows)
    return {"since": since, "until": until, "items": items, "total_cost_usd": nanos_to_usd(total)}
