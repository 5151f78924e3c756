"""The conversation as the script sees it, whichever wire format it came in.

Both wire modules parse into these types, so the script, the token counts and the
tool-call ids are the same for an Anthropic and an OpenAI request that say the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    schema: Any = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: Any


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class Conversation:
    model: str
    system: str
    turns: tuple[Turn, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int | None = None

    def offers(self, tool_name: str) -> bool:
        return any(tool.name == tool_name for tool in self.tools)

    def canonical(self) -> str:
        """System, turns and tools as compact, key-sorted JSON: the basis of token
        counts and tool-call ids. Model and max_tokens are left out on purpose, so a
        fallback to another model sees the same counts."""
        data = {
            "system": self.system,
            "turns": [asdict(turn) for turn in self.turns],
            "tools": [asdict(tool) for tool in self.tools],
        }
        return canonical_json(data)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
