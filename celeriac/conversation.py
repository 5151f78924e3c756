"""Rebuild a run's conversation from its completed steps: the store is the only
copy, so any worker can take any step."""

from __future__ import annotations

from celeriac.messages import Message, user_text
from celeriac.store import Run, Step


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
