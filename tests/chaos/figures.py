"""What a chaos run did, checked against the store, the effects, the ledger and the
provider's request log: the figures, and every broken promise found."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import httpx
import redis
from sqlalchemy import select

from celeriac.store import Database, LedgerEntry, Run, Step
from tests.chaos.harness import (
    IN_FLIGHT_SLACK_S,
    LATENCY_MS,
    SENT_BEFORE_READ_S,
    Chaos,
)
from tests.chaos.tools import EFFECTS, RUNS_PREFIX


def verify(chaos: Chaos, db: Database, r: redis.Redis, sim_url: str,
            ids: list[str]) -> dict[str, Any]:
    """The run's figures, and under "problems" every broken promise found (the
    figures are written even when some are broken, to see what happened)."""
    problems: list[str] = []
    with db.reader() as s:
        runs = {run.id: run for run in s.scalars(select(Run).where(Run.id.in_(ids)))}
        steps = list(s.scalars(select(Step).where(Step.run_id.in_(ids))))
        ledger = list(s.scalars(select(LedgerEntry).where(LedgerEntry.run_id.in_(ids))))
    statuses = Counter(run.status for run in runs.values())
    for i, run_id in enumerate(ids):
        run = runs[run_id]
        if run.status != "completed" or f"e{i}" not in (run.result or ""):
            problems.append(f"task {run_id}: {run.status} {run.error_code} {run.error_message}")
    llm_steps = [st for st in steps if st.kind == "llm"]
    tool_steps = [st for st in steps if st.kind == "tool"]

    # Tools: each effect once; a journaled result never followed by another run.
    effects = Counter(r.lrange(EFFECTS, 0, -1))
    duplicates = {key: n for key, n in effects.items() if n > 1}
    missing = {st.id for st in tool_steps if st.status == "completed"} - set(effects)
    if duplicates or missing:
        problems.append(f"effects: duplicated {duplicates}, missing {sorted(missing)[:5]}")
    tool_runs = {st.id: [float(x) for x in r.lrange(RUNS_PREFIX + st.id, 0, -1)]
                 for st in tool_steps}
    tool_replays = 0
    for st in tool_steps:
        replayed = [e["replayed_from"] for e in st.attempt_log if "replayed_from" in e]
        if replayed:
            tool_replays += 1
            if any(t > min(replayed) for t in tool_runs[st.id]):
                problems.append(f"tool {st.id} ran again after its result was journaled")

    # Provider: one ledger row per LLM step; extra paid requests only on the wire
    # at a kill; nothing after a journaled answer.
    # Calls a worker died with on the wire are charged in rows of their own
    # ("<step>#w<wire id>", celeriac.durability.lost_calls); the step's own row is its answer.
    lost_rows = [row for row in ledger if "#w" in row.step_id]
    ledger = [row for row in ledger if "#w" not in row.step_id]
    per_step_ledger = Counter(row.step_id for row in ledger)
    completed_llm = {st.id for st in llm_steps if st.status == "completed"}
    if set(per_step_ledger) != completed_llm or max(per_step_ledger.values(), default=1) > 1:
        problems.append("ledger: not exactly one row per completed LLM step")
    log = httpx.get(f"{sim_url}/_sim/log", timeout=30).json()
    paid: dict[str, list[dict[str, Any]]] = {}
    for entry in log:
        if entry.get("status") == 200 and (entry.get("step") or "").split("-")[0] in runs:
            paid.setdefault(entry["step"], []).append(entry)
    kill_times = sorted(k.at for k in chaos.kills)
    in_flight_repaid = 0
    unexplained: list[tuple[str, float]] = []
    llm_replays = 0
    ledger_by_step = {row.step_id: row for row in ledger}
    for st in llm_steps:
        calls = sorted(paid.get(st.id, []), key=lambda e: e["ts"])
        replayed = [e["replayed_from"] for e in st.attempt_log if "replayed_from" in e]
        if replayed:
            llm_replays += 1
            unexplained.extend((st.id, e["ts"]) for e in calls if e["ts"] > min(replayed))
        for extra in calls[:-1]:
            answered_by = extra["ts"] + LATENCY_MS / 1000 + IN_FLIGHT_SLACK_S
            if any(extra["ts"] - SENT_BEFORE_READ_S <= k <= answered_by for k in kill_times):
                in_flight_repaid += 1
            else:
                unexplained.append((st.id, extra["ts"]))
        row = ledger_by_step.get(st.id)
        if row is not None and (not calls or (row.input_tokens, row.output_tokens) != (
                calls[-1]["input_tokens"], calls[-1]["output_tokens"])):
            problems.append(f"ledger row of {st.id} matches no answer the provider gave")
    if unexplained:
        problems.append(f"paid twice after the answer had arrived: {unexplained[:5]}")
    # Every call paid on the wire at a kill is charged. (A kill between the note and
    # the request leaving makes a charge with no bill: more rows, never fewer.)
    if len(lost_rows) < in_flight_repaid:
        problems.append(f"calls paid on the wire: {in_flight_repaid}, charged: {len(lost_rows)}")

    resumed = sorted(chaos.resumed_s)
    by_how = Counter(k.how for k in chaos.kills)
    return {
        "tasks": {"submitted": len(ids), "completed": statuses["completed"],
                  "lost": len(ids) - statuses["completed"]},
        "kills": {"total": len(chaos.kills), "outside": by_how.pop("outside", 0),
                  "failpoints": dict(sorted(by_how.items()))},
        "steps": {"llm": len(llm_steps), "tool": len(tool_steps),
                  "recoveries": sum(st.recoveries for st in steps),
                  "most_recoveries_of_one_step": max((st.recoveries for st in steps),
                                                     default=0)},
        # From the kill to a live worker taking the task's step over...
        "recovery_s": _summary(resumed),
        # ...and to one more of its steps completed (further kills included).
        "progress_s": _summary(sorted(chaos.progressed_s)),
        "slowest_resumes": [
            {"s": round(sec, 2), "run": run_id, "kill_at": at} for sec, run_id, at in chaos.slowest
        ],
        "tool": {"effects": sum(effects.values()), "duplicate_effects": len(duplicates),
                 "replayed_from_journal": tool_replays,
                 "reruns_after_mid_tool_kill": sum(max(0, len(v) - 1)
                                                   for v in tool_runs.values())},
        "provider": {
            "ledger_rows": len(ledger), "ledger_usd": sum(x.cost_nanos for x in ledger) / 1e9,
            "lost_calls_charged": len(lost_rows),
            "lost_calls_usd": sum(x.cost_nanos for x in lost_rows) / 1e9,
            "paid_requests": sum(len(v) for v in paid.values()),
            "replayed_from_journal": llm_replays,
            "repaid_kill_on_the_wire": in_flight_repaid,
            "paid_twice_after_answer": len(unexplained),
        },
        "problems": problems[:20],
    }


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"interrupted_tasks": 0, "p50": None, "p99": None, "max": 0.0}
    return {"interrupted_tasks": len(values), "p50": round(statistics.median(values), 2),
            "p99": round(_percentile(values, 0.99), 2), "max": round(values[-1], 2)}


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
    return values[rank]
