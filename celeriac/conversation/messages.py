"""The canonical conversation format, and its conversion to OpenAI's.

Internally a conversation is Anthropic-shaped: a system prompt plus messages whose
``content`` is a list of blocks:

    {"type": "text", "text": str}
    {"type": "tool_use", "id": str, "name": str, "input": dict}
    {"type": "tool_result", "tool_use_id": str, "content": str, "is_error": bool}

Tool results travel in a ``user`` message, as Anthropic requires. OpenAI's Chat
Completions shape is derived from this one and back, tool calls included, so a run
can fall back from one provider to the other mid-conversation.
"""

from __future__ import annotations

import json
from typing import Any

from celeriac import strict_json

Block = dict[str, Any]
Message = dict[str, Any]


def text_block(text: str) -> Block:
    return {"type": "text", "text": text}


def user_text(text: str) -> Message:
    return {"role": "user", "content": [text_block(text)]}


def text_of(content: list[Block]) -> str:
    return "".join(b["text"] for b in content if b.get("type") == "text")


def tool_uses(content: list[Block]) -> list[Block]:
    return [b for b in content if b.get("type") == "tool_use"]


def to_openai(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Canonical -> Chat Completions messages."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for message in messages:
        blocks = message["content"]
        if message["role"] == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": text_of(blocks) or None}
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b["input"])},
                }
                for b in tool_uses(blocks)
            ]
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        # A user message: tool results become `tool` messages, text stays user text.
        for b in blocks:
            if b.get("type") == "tool_result":
                out.append(
                    {"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["content"]}
                )
        text = text_of(blocks)
        if text:
            out.append({"role": "user", "content": text})
    return out


def from_openai_message(message: dict[str, Any]) -> list[Block]:
    """A Chat Completions assistant message -> canonical blocks."""
    blocks: list[Block] = []
    if message.get("content"):
        blocks.append(text_block(str(message["content"])))
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        raw = fn.get("arguments") or "{}"
        try:
            # Strictly: NaN or 1e400 from a model would be stored, and served back in
            # the task's status as something that is not JSON.
            arguments = strict_json.loads(raw)
        except strict_json.JSONRejected:
            arguments = {"_raw": raw}
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": fn.get("name", ""), "input": arguments}
        )
    return blocks


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical tool specs ({name, description, input_schema}) -> OpenAI functions."""
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description", ""),
                "parameters": t["input_schema"],
            },
        }
        for t in tools
    ]
