"""Accepting a task: resolve agent, version, model and priority, refuse what cannot
run (unknown names, a provider without a key, a model without a price) before
anything is queued, and persist the run with its first step in one transaction."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from celeriac.accounting.pricing import price_of
from celeriac.catalog import Catalog
from celeriac.clock import utcnow
from celeriac.errors import InvalidRequest, NotFound
from celeriac.execution.priority import Priority, resolve_priority
from celeriac.execution.step_ids import llm_step_id, new_step
from celeriac.gateway.providers.registry import ProviderRegistry
from celeriac.store import Database, Run, Thread


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
    # Continue this conversation; None starts a new one.
    thread_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    run_id: str
    first_step_id: str
    priority: Priority
    created: bool  # False when an Idempotency-Key matched an earlier task
    thread_id: str | None = None


def fingerprint(sub: Submission) -> str:
    """What makes two requests the same request, for an Idempotency-Key: every field
    the client chose, canonically encoded. The tenant and the key itself are not in
    it (the key is looked up per tenant)."""
    request = {
        "input": sub.input,
        "agent": sub.agent,
        "model": sub.model,
        "priority": sub.priority,
        "budget_usd": sub.budget_usd,
        "webhook_url": sub.webhook_url,
        "metadata": sub.metadata,
        "thread_id": sub.thread_id,
    }
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit(
    db: Database,
    catalog: Catalog,
    providers: ProviderRegistry,
    sub: Submission,
    *,
    max_budget_usd: float,
) -> Accepted:
    digest = fingerprint(sub) if sub.idempotency_key is not None else None
    if sub.idempotency_key is not None:
        earlier = _find_by_key(db, sub.tenant, sub.idempotency_key, digest)
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
        request_fingerprint=digest,
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(seconds=version.max_duration_s),
    )
    first = new_step(run_id, turn=0, kind="llm", name=model.id, index=0, now=now)
    # Marked sent in the same transaction: the caller sends it right after the commit
    # (and fails the task if the broker refuses). Were the caller to die in between,
    # the step is "sent but never started" and the reaper sends it after 30 s; a
    # second write per submission to say "sent" cost the API about 1 ms a request.
    first.sent_at = now
    try:
        with db.session() as session:
            thread = _join_thread(session, sub.tenant, sub.thread_id, now)
            run.thread_id, run.thread_seq = thread.id, thread.turns
            session.add(run)
            session.add(first)
    except IntegrityError:
        # Two requests raced with the same Idempotency-Key: the other one won.
        if sub.idempotency_key is not None:
            earlier = _find_by_key(db, sub.tenant, sub.idempotency_key, digest)
            if earlier is not None:
                return earlier
        raise
    return Accepted(run_id, first.id, priority, created=True, thread_id=run.thread_id)


def _join_thread(session: Session, tenant: str, thread_id: str | None, now: datetime) -> Thread:
    """The thread the new task joins, locked so that concurrent submissions on one
    thread get distinct, ordered places; a new thread when none is named."""
    if thread_id is None:
        thread = Thread(id=uuid.uuid4().hex, tenant=tenant, turns=0, created_at=now, updated_at=now)
        session.add(thread)
    else:
        found = session.get(Thread, thread_id, with_for_update=True)
        if found is None or found.tenant != tenant:
            # Another tenant's thread is as unknown as a thread that never was.
            raise NotFound(f"no thread {thread_id!r}", field="thread_id")
        thread = found
    thread.turns += 1
    thread.updated_at = now
    return thread


def _find_by_key(db: Database, tenant: str, key: str, digest: str | None) -> Accepted | None:
    """The earlier task with this key, if any. The key with a different request is
    an error (as Stripe answers it), not that task: the client has a bug, and
    answering with a task it did not describe would hide it."""
    with db.reader() as session:
        run = session.scalar(
            select(Run).where(Run.tenant == tenant, Run.idempotency_key == key)
        )
        if run is None:
            return None
        if run.request_fingerprint is not None and run.request_fingerprint != digest:
            raise InvalidRequest(
                "this Idempotency-Key was used with a different request; "
                "use a new key for a new request",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        level = run.priority_level
        return Accepted(
            run.id,
            llm_step_id(run.id, 0),
            resolve_priority(level, "normal"),
            created=False,
            thread_id=run.thread_id,
        )
