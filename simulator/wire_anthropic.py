"""The Anthropic Messages API wire format (``POST /v1/messages``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from simulator.conversation import Conversation, ToolCall, ToolResult, ToolSpec, Turn
from simulator.errors import BadRequest, kind_for
from simulator.limiter import RateState
from simulator.script import Reply
from simulator.wire import (
    as_list,
    as_object,
    bearer_token,
    check_tool_pairing,
    get_max_tokens,
    get_str,
    refuse_streaming,
    text_of,
)


class AnthropicWire:
    name = "anthropic"
    request_id_header = "request-id"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        # The API's documented header is x-api-key, but the installed SDK (2.x) sends
        # the key as "Authorization: Bearer"; the real API takes both.
        key = headers.get("x-api-key") or bearer_token(headers)
        return key or None

    def missing_key_message(self) -> str:
        return "x-api-key header is required (Authorization: Bearer is accepted too)"

    def parse(self, body: Any, *, counting: bool = False) -> Conversation:
        body = as_object(body, "body")
        refuse_streaming(body)
        messages = as_list(body.get("messages"), "messages")
        if not messages:
            raise BadRequest("messages: at least one message is required")
        turns = tuple(_turn(message, f"messages.{i}") for i, message in enumerate(messages))
        check_tool_pairing(turns)
        tools = as_list(body.get("tools") or [], "tools")
        return Conversation(
            model=get_str(body, "model", ""),
            system=text_of(body.get("system"), "system"),
            turns=turns,
            tools=tuple(_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)),
            max_tokens=get_max_tokens(body, ("max_tokens",), required=not counting),
        )

    def render(self, reply: Reply, conversation: Conversation, request_id: str) -> Any:
        content: list[dict[str, Any]] = []
        if reply.text or not reply.calls:
            content.append({"type": "text", "text": reply.text})
        content.extend(
            {"type": "tool_use", "id": f"toolu_{c.id}", "name": c.name, "input": c.input}
            for c in reply.calls
        )
        return {
            "id": "msg_" + request_id.removeprefix("req_"),
            "type": "message",
            "role": "assistant",
            "model": conversation.model,
            "content": content,
            "stop_reason": reply.stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def error(self, status: int, message: str, request_id: str) -> Any:
        kind = kind_for(status).anthropic
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }

    def status_for(self, status: int) -> int:
        return status

    def rate_headers(self, state: RateState) -> list[tuple[str, str]]:
        reset = datetime.fromtimestamp(time.time() + state.reset_s, tz=UTC)
        return [
            ("anthropic-ratelimit-requests-limit", str(state.limit)),
            ("anthropic-ratelimit-requests-remaining", str(state.remaining)),
            ("anthropic-ratelimit-requests-reset", reset.isoformat(timespec="seconds")[:-6] + "Z"),
        ]


def _turn(message: Any, where: str) -> Turn:
    message = as_object(message, where)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{where}.role: expected 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return Turn(role=role, text=content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ToolResult] = []
    for index, block in enumerate(as_list(content, f"{where}.content")):
        at = f"{where}.content.{index}"
        block = as_object(block, at)
        kind = block.get("type")
        if kind == "text":
            texts.append(get_str(block, "text", f"{at}."))
        elif kind == "tool_use":
            if role != "assistant":
                raise BadRequest(f"{at}: tool_use blocks belong in assistant messages")
            calls.append(_call(block, at))
        elif kind == "tool_result":
            if role != "user":
                raise BadRequest(f"{at}: tool_result blocks belong in user messages")
            results.append(
                ToolResult(
                    call_id=get_str(block, "tool_use_id", f"{at}."),
                    content=text_of(block.get("content"), f"{at}.content"),
                    is_error=bool(block.get("is_error", False)),
                )
            )
        # Other blocks (image, document, thinking) carry nothing the script reads.
    return Turn(
        role=role, text="\n".join(texts), tool_calls=tuple(calls), tool_results=tuple(results)
    )


def _call(block: dict[str, Any], at: str) -> ToolCall:
    return ToolCall(
        id=get_str(block, "id", f"{at}."),
        name=get_str(block, "name", f"{at}."),
        input=as_object(block.get("input", {}), f"{at}.input"),
    )


def _tool(tool: Any, where: str) -> ToolSpec:
    tool = as_object(tool, where)
    return ToolSpec(
        name=get_str(tool, "name", f"{where}."),
        description=get_str(tool, "description", f"{where}.", default=""),
        schema=tool.get("input_schema"),
    )
