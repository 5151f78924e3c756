"""The status document the API, the event stream, webhooks and the form all show.

Documents leave through the store's Redactor: the store is written redacted, and
this last pass also covers rows written before a secret was configured."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from celeriac.accounting.pricing import nanos_to_usd
from celeriac.clock import aware
from celeriac.errors import NotFound
from celeriac.store import Database, Run, Step, Thread
from celeriac.store.schema import TERMINAL_STATUSES

# Every task and thread id this store makes (uuid4 hex) or accepts (RunRequest's
# thread_id) has this shape. Anything else is unknown without asking the store,
# which may refuse to be asked: PostgreSQL rejects NUL in a query parameter.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _unknown(kind: str, ident: str) -> NotFound:
    return NotFound(f"no {kind} {ident[:64]!r}")


def _iso(moment: datetime | None) -> str | None:
    return aware(moment).isoformat() if moment is not None else None


def progress(run: Run, steps: list[Step]) -> int:
    """Percent of max_steps done; 100 only when the run completed."""
    if run.status == "completed":
        return 100
    done = sum(1 for s in steps if s.kind == "llm" and s.status == "completed")
    return min(99, (100 * done) // max(1, run.max_steps))


def step_document(step: Step) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": step.id,
        "kind": step.kind,
        "name": step.name,
        "status": step.status,
        "latency_ms": round(step.latency_ms, 1) if step.latency_ms is not None else None,
        "input_tokens": step.input_tokens,
        "output_tokens": step.output_tokens,
        "cost_usd": nanos_to_usd(step.cost_nanos),
        "attempts": step.attempts,
        "model": step.model,
        "fallback_reason": step.fallback_reason,
        "cached": step.cached,
        "attempt_log": step.attempt_log,
        # A tool that failed still completes its step (the model sees the error);
        # an LLM step's error is shown only while it has not (yet) succeeded.
        "error": (
            {"code": step.error_code, "message": step.error_message}
            if step.error_code and (step.status != "completed" or step.kind == "tool")
            else None
        ),
    }
    if step.kind == "tool":
        doc["arguments"] = step.arguments
        doc["output"] = (step.output or {}).get("content")
    elif step.kind == "summary":
        # What was folded (the first ``covers`` messages of the thread) and into what.
        doc["arguments"] = step.arguments
        doc["output"] = (step.output or {}).get("summary")
    return doc


def run_document(run: Run, steps: list[Step]) -> dict[str, Any]:
    ordered = sorted(steps, key=lambda s: s.seq)
    return {
        "task_id": run.id,
        "status": run.status,
        "progress": progress(run, ordered),
        "result": run.result,
        "error": (
            {"code": run.error_code, "message": run.error_message}
            if run.error_code and run.status != "completed"
            else None
        ),
        "usage": {
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cost_usd": nanos_to_usd(run.cost_nanos),
        },
        "model": run.model,
        "agent": run.agent,
        "agent_version": run.agent_version,
        "priority": run.priority,
        "budget_usd": run.budget_usd,
        "metadata": run.meta,
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "finished_at": _iso(run.finished_at),
        "version": run.version,
        "thread_id": run.thread_id,
        "steps": [step_document(s) for s in ordered],
    }


def _usage(runs: list[Run]) -> dict[str, Any]:
    return {
        "input_tokens": sum(r.input_tokens for r in runs),
        "output_tokens": sum(r.output_tokens for r in runs),
        "cost_usd": nanos_to_usd(sum(r.cost_nanos for r in runs)),
    }


def load_thread_document(db: Database, thread_id: str, tenant: str | None) -> dict[str, Any]:
    """A thread's turns (its tasks, in order), with usage and cost each and in all."""
    if not _ID.fullmatch(thread_id):
        raise _unknown("thread", thread_id)
    with db.reader() as s:
        thread = s.get(Thread, thread_id)
        if thread is None or (tenant is not None and thread.tenant != tenant):
            raise _unknown("thread", thread_id)
        runs = list(
            s.scalars(select(Run).where(Run.thread_id == thread_id).order_by(Run.thread_seq))
        )
        return db.redactor.value({
            "thread_id": thread.id,
            "created_at": _iso(thread.created_at),
            "updated_at": _iso(thread.updated_at),
            "usage": _usage(runs),
            "turns": [
                {
                    "task_id": r.id,
                    "status": r.status,
                    "input": r.input,
                    "result": r.result,
                    "error": (
                        {"code": r.error_code, "message": r.error_message}
                        if r.error_code and r.status != "completed"
                        else None
                    ),
                    "usage": _usage([r]),
                    "created_at": _iso(r.created_at),
                    "finished_at": _iso(r.finished_at),
                }
                for r in runs
            ],
        })


def load_run_document(db: Database, run_id: str, tenant: str | None = None) -> dict[str, Any]:
    if not _ID.fullmatch(run_id):
        raise _unknown("task", run_id)
    with db.reader() as s:
        run = s.get(Run, run_id)
        if run is None or (tenant is not None and run.tenant != tenant):
            raise _unknown("task", run_id)
        steps = list(s.scalars(select(Step).where(Step.run_id == run_id)))
        return db.redactor.value(run_document(run, steps))


def run_versions(db: Database, run_ids: Collection[str]) -> dict[str, tuple[int, bool]]:
    """(version, terminal) of many runs in one query: the event streams' shared poll.
    A run that no longer exists is absent from the answer."""
    if not run_ids:
        return {}
    with db.reader() as s:
        rows = s.execute(
            select(Run.id, Run.version, Run.status).where(Run.id.in_(list(run_ids)))
        )
        return {row.id: (row.version, row.status in TERMINAL_STATUSES) for row in rows}


def list_runs(
    db: Database,
    *,
    tenant: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    with db.reader() as s:
        query = select(Run)
        count = select(func.count()).select_from(Run)
        if tenant is not None:
            query, count = query.where(Run.tenant == tenant), count.where(Run.tenant == tenant)
        if status is not None:
            query, count = query.where(Run.status == status), count.where(Run.status == status)
        total = s.scalar(count) or 0
        rows = s.scalars(query.order_by(Run.created_at.desc(), Run.id).limit(limit).offset(offset))
        items = [
            {
                "task_id": r.id,
                "status": r.status,
                "agent": r.agent,
                "model": r.model,
                "priority": r.priority,
                "input": r.input[:200],
                "cost_usd": nanos_to_usd(r.cost_nanos),
                "created_at": _iso(r.created_at),
                "updated_at": _iso(r.updated_at),
            }
            for r in rows
        ]
        return db.redactor.value(items), int(total)
