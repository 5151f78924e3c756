"""The dashboard's numbers, from the store and Redis (no Prometheus needed).

Rates and latency cover runs that finished in the last 24 hours; costs come from the
ledger, so they agree with the status API and the usage report to the nano-dollar.

Every figure about work (tasks, steps, tool and provider calls, costs) is the calling
tenant's alone. What is shared by all tenants is shown as it is: broker queue depths,
circuit states and rate-limit pauses, and the global daily cap, which can refuse this
tenant's tasks too.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import func, select

from celeriac.accounting.budgets import Budgets
from celeriac.accounting.keeper import BudgetKeeper
from celeriac.accounting.pricing import nanos_to_usd
from celeriac.catalog import Catalog
from celeriac.clock import aware, utcnow
from celeriac.gateway.limits.breaker import CircuitBreaker
from celeriac.gateway.limits.ratelimit import RateLimiter
from celeriac.observability.metrics import LATENCY
from celeriac.observability.queue_depth import queue_stats
from celeriac.store import Database, LedgerEntry, Run, Step

FINISHED = ("completed", "failed", "cancelled")


def budget_summary(keeper: BudgetKeeper, budgets: Budgets, tenant: str,
                   now: datetime) -> dict[str, Any]:
    day = budgets.day(now).isoformat()

    def view(cap_usd: float, state: dict[str, int]) -> dict[str, float | None]:
        spent, reserved = nanos_to_usd(state["spent"]), nanos_to_usd(state["reserved"])
        remaining = None if cap_usd <= 0 else max(0.0, cap_usd - spent - reserved)
        return {"cap_usd": cap_usd or None, "spent_usd": spent, "reserved_usd": reserved,
                "remaining_usd": remaining}

    return {
        "day": day,
        "timezone": budgets.timezone,
        "resets_at": budgets.next_reset(now).isoformat(),
        "tenant": view(budgets.tenant_cap(tenant), keeper.day_state(day, tenant)),
        "global": view(budgets.daily_usd, keeper.day_state(day)),
        "max_task_usd": budgets.max_task_usd,
    }


def dashboard_data(
    *,
    db: Database,
    catalog: Catalog,
    broker: Redis | None,
    breaker: CircuitBreaker,
    limiter: RateLimiter,
    keeper: BudgetKeeper,
    budgets: Budgets,
    tenant: str,
) -> dict[str, Any]:
    now = utcnow()
    since = now - timedelta(hours=24)
    tenant_filter = Run.tenant == tenant
    with db.reader() as s:
        live: dict[str, int] = {
            status: int(n)
            for status, n in s.execute(
                select(Run.status, func.count())
                .where(Run.status.in_(("queued", "running")), tenant_filter)
                .group_by(Run.status)
            ).all()
        }
        finished = [
            (status, created, ended)
            for status, created, ended in s.execute(
                select(Run.status, Run.created_at, Run.finished_at)
                .where(Run.finished_at >= since, Run.status.in_(FINISHED), tenant_filter)
            ).all()
            if ended is not None
        ]
        steps = list(s.execute(
            select(Step.kind, Step.name, Step.status, Step.error_code, Step.attempt_log)
            .join(Run, Run.id == Step.run_id)
            .where(Step.finished_at >= since, tenant_filter)
        ).all())
        days = [(budgets.day(now) - timedelta(days=13 - i)).isoformat() for i in range(14)]
        cost_rows = dict(s.execute(
            select(LedgerEntry.day, func.sum(LedgerEntry.cost_nanos))
            .where(LedgerEntry.day >= days[0], LedgerEntry.tenant == tenant)
            .group_by(LedgerEntry.day)).all())
    counts = Counter(status for status, _c, _f in finished)
    done = sum(counts.values())
    latencies = [(aware(f) - aware(c)).total_seconds() for _s, c, f in finished]
    hours = [(now - timedelta(hours=23 - i)).replace(minute=0, second=0, microsecond=0)
             for i in range(24)]
    by_hour = {h: Counter[str]() for h in hours}
    for status, _created, finished_at in finished:
        hour = aware(finished_at).replace(minute=0, second=0, microsecond=0)
        if hour in by_hour:
            by_hour[hour][status] += 1
    return {
        "generated_at": now.isoformat(),
        "totals": {
            "tasks": done + sum(live.values()),
            "completed": counts["completed"],
            "failed": counts["failed"],
            "cancelled": counts["cancelled"],
            "running": int(live.get("running", 0)),
            "queued": int(live.get("queued", 0)),
            "success_rate": counts["completed"] / done if done else None,
            "error_rate": counts["failed"] / done if done else None,
            "avg_latency_s": sum(latencies) / len(latencies) if latencies else None,
            "cost_today_usd": nanos_to_usd(int(cost_rows.get(days[-1], 0) or 0)),
        },
        "requests_by_hour": [
            {"hour": h.isoformat(), **{k: by_hour[h][k] for k in FINISHED}} for h in hours
        ],
        "latency_histogram": _histogram(latencies),
        "tool_usage": _tool_usage(steps),
        "cost_by_day": [
            {"day": d, "cost_usd": nanos_to_usd(int(cost_rows.get(d, 0) or 0))} for d in days
        ],
        "queues": [
            {"name": q.name, "depth": q.depth, "oldest_age_s": q.oldest_age_s}
            for q in (queue_stats(broker) if broker is not None else [])
        ],
        "providers": _providers(catalog, steps, breaker, limiter),
        "budgets": budget_summary(keeper, budgets, tenant, now),
    }


def _histogram(latencies: list[float]) -> list[dict[str, Any]]:
    bounds = [str(b) for b in LATENCY.buckets] + ["+Inf"]
    counts = [0] * len(bounds)
    for value in latencies:
        for i, bound in enumerate(LATENCY.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
    return [{"le": b, "count": n} for b, n in zip(bounds, counts, strict=True)]


def _tool_usage(steps: list[Any]) -> list[dict[str, Any]]:
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for kind, name, _status, error_code, _log in steps:
        if kind == "tool":
            calls[name] += 1
            if error_code:
                errors[name] += 1
    return [{"tool": t, "calls": n, "errors": errors[t]} for t, n in calls.most_common()]


def _providers(catalog: Catalog, steps: list[Any], breaker: CircuitBreaker,
               limiter: RateLimiter) -> list[dict[str, Any]]:
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for kind, _name, _status, _code, attempt_log in steps:
        if kind != "llm":
            continue
        for attempt in attempt_log or []:
            model = attempt.get("model")
            calls[model] += 1
            if not attempt.get("ok", True):
                errors[model] += 1
    return [
        {
            "model": model.id,
            "provider": model.provider,
            "circuit": breaker.view(model.id).state,
            "paused_for_s": round(limiter.paused_for(model.id), 3),
            "calls_24h": calls[model.id],
            "errors_24h": errors[model.id],
        }
        for model in catalog.models.values()
    ]
