"""Step identities. A step's id is deterministic (run, turn, position), so that a
duplicate dispatch names the same step, and it doubles as the Celery task id, so a
cancelled run can revoke its queued steps by id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celeriac.store import Step

# seq orders steps within a run: the LLM call of a turn, then its tool calls.
_SEQ_PER_TURN = 1000


def llm_step_id(run_id: str, turn: int) -> str:
    return f"{run_id}-{turn}-llm"


def tool_step_id(run_id: str, turn: int, index: int) -> str:
    return f"{run_id}-{turn}-tool-{index}"


def summary_step_id(run_id: str, turn: int) -> str:
    return f"{run_id}-{turn}-summary"


def new_step(
    run_id: str,
    *,
    turn: int,
    kind: str,
    name: str,
    index: int,
    now: datetime,
    tool_call_id: str | None = None,
    arguments: dict[str, Any] | None = None,
) -> Step:
    if kind == "llm":
        step_id, seq = llm_step_id(run_id, turn), turn * _SEQ_PER_TURN
    elif kind == "summary":
        # Just before the turn's LLM call, which waits for it.
        step_id, seq = summary_step_id(run_id, turn), turn * _SEQ_PER_TURN - 1
    else:
        step_id, seq = tool_step_id(run_id, turn, index), turn * _SEQ_PER_TURN + 1 + index
    return Step(
        id=step_id,
        run_id=run_id,
        seq=seq,
        turn=turn,
        kind=kind,
        name=name,
        status="pending",
        tool_call_id=tool_call_id,
        arguments=arguments,
        attempt_log=[],
        created_at=now,
    )
