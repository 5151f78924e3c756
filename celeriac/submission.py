"""Accepting a task: resolve agent, version, model and priority, refuse what cannot
run (unknown names, a provider without a key, a model without a price) before
anything is queued, and persist the run with its first step in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from celeriac.catalog import Catalog
from celeriac.clock import utcnow
from celeriac.errors import InvalidRequest
from celeriac.pricing import price_of
from celeriac.priority import Priority, resolve_priority
from celeriac.providers.registry import ProviderRegistry
from celeriac.steps import llm_step_id, new_step
from celeriac.store import Database, Run


@dataclass
class Submission:
    input: str
    agent: str = "default"
    model: str | None = None
    priority: str | int | None = None
    budget_usd: float | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tenant: str = "default"
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Accepted:
    run_id: str
    first_step_id: str
    priority: Priority
    created: bool  # False when an Idempotency-Key matched an earlier task


def submit(
    db: Database,
    catalog: Catalog,
    providers: ProviderRegistry,
    sub: Submission,
    *,
    max_budget_usd: float,
) -> Accepted:
    if sub.idempotency_key is not None:
        earlier = _find_by_key(db, sub.tenant, sub.idempotency_key)
        if earlier is not None:
            return earlier
    run_id = uuid.uuid4().hex
    version = catalog.resolve(sub.agent, routing_key=run_id)
    model = catalog.model(sub.model or version.model)
    providers.check(model)
    price_of(model)
    priority = resolve_priority(sub.priority, version.priority)
    budget = version.budget_usd if sub.budget_usd is None else sub.budget_usd
    if budget <= 0:
        raise InvalidRequest("budget_usd must be greater than 0", field="budget_usd")
    now = utcnow()
    run = Run(
        id=run_id,
        tenant=sub.tenant,
        agent=version.agent,
        agent_version=version.version,
        model=model.id,
        status="queued",
        priority=priority.name,
        priority_level=priority.level,
        input=sub.input,
        max_steps=version.max_steps,
        max_tokens=min(version.max_tokens, model.max_output_tokens),
        # The request's budget is capped by the agent's and the server's maximum.
        budget_usd=min(budget, version.budget_usd, max_budget_usd),
        webhook_url=sub.webhook_url,
        meta=sub.metadata,
        idempotency_key=sub.idempotency_key,
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(seconds=version.max_duration_s),
    )
    first = new_step(run_id, turn=0, kind="llm", name=model.id, index=0, now=now)
    try:
        with db.session() as session:
            session.add(run)
            session.add(first)
    except IntegrityError:
        # Two requests raced with the same Idempotency-Key: the other one won.
        if sub.idempotency_key is not None:
            earlier = _find_by_key(db, sub.tenant, sub.idempotency_key)
            if earlier is not None:
                return earlier
        raise
    return Accepted(run_id, first.id, priority, created=True)


def _find_by_key(db: Database, tenant: str, key: str) -> Accepted | None:
    with db.reader() as session:
        run = session.scalar(
            select(Run).where(Run.tenant == tenant, Run.idempotency_key == key)
        )
        if run is None:
            return None
        level = run.priority_level
        return Accepted(
            run.id, llm_step_id(run.id, 0), resolve_priority(level, "normal"), created=False
        )
