"""Rebuild a run's conversation from its completed steps: the store is the only
copy, so any worker can take any step. A run on a thread is preceded by the turns
of the thread's earlier completed runs, with the latest summary folded in."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.conversation.messages import Message, user_text
from celeriac.conversation.window import with_summary
from celeriac.store import Run, Step


@dataclass(frozen=True)
class Prompt:
    """What the next LLM call of a run sees, and where it came from."""

    full: list[Message]  # every message of the thread so far, unfolded
    summary: str | None
    covers: int  # how many of ``full`` the summary replaces

    @property
    def messages(self) -> list[Message]:
        if self.summary is None:
            return self.full
        return with_summary(self.full, self.summary, self.covers)


def load_prompt(s: Session, run: Run) -> Prompt:
    """The run's conversation with its thread's earlier turns in front. Only completed
    turns count: a failed or cancelled one may end with a call that has no result."""
    runs: list[Run] = []
    if run.thread_id is not None and run.thread_seq > 1:
        runs = list(
            s.scalars(
                select(Run)
                .where(
                    Run.thread_id == run.thread_id,
                    Run.thread_seq < run.thread_seq,
                    Run.status == "completed",
                )
                .order_by(Run.thread_seq)
            )
        )
    runs.append(run)
    steps_by_run: dict[str, list[Step]] = {r.id: [] for r in runs}
    for step in s.scalars(select(Step).where(Step.run_id.in_(list(steps_by_run)))):
        steps_by_run[step.run_id].append(step)
    full: list[Message] = []
    summary: tuple[str, int] | None = None
    for each in runs:
        steps = steps_by_run[each.id]
        full.extend(conversation(each, steps))
        for step in sorted(steps, key=lambda st: st.seq):
            if step.kind == "summary" and step.status == "completed" and step.output:
                summary = (str(step.output["summary"]), int(step.output["covers"]))
    if summary is None:
        return Prompt(full, None, 0)
    return Prompt(full, summary[0], summary[1])


def conversation(run: Run, steps: list[Step]) -> list[Message]:
    messages: list[Message] = [user_text(run.input)]
    by_turn: dict[int, list[Step]] = {}
    for step in sorted(steps, key=lambda s: s.seq):
        by_turn.setdefault(step.turn, []).append(step)
    for turn in sorted(by_turn):
        llm = [s for s in by_turn[turn] if s.kind == "llm" and s.status == "completed"]
        if not llm or llm[0].output is None:
            break
        messages.append({"role": "assistant", "content": llm[0].output["content"]})
        tools = [s for s in by_turn[turn] if s.kind == "tool"]
        if not tools:
            continue
        results = []
        for tool in tools:
            output = tool.output or {}
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": tool.tool_call_id,
                    "content": str(output.get("content", "")),
                    "is_error": bool(output.get("is_error", False)),
                }
            )
        messages.append({"role": "user", "content": results})
    return messages
