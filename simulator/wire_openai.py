"""The OpenAI Chat Completions wire format (``POST /v1/chat/completions``).

Consecutive ``tool`` messages become one user turn of tool results, the shape the
script reads in both formats. Chat Completions has no ``is_error`` on tool results,
so a failed tool arrives as plain text and is quoted as such.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
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

_FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}


class OpenAIWire:
    name = "openai"
    request_id_header = "x-request-id"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return bearer_token(headers)

    def missing_key_message(self) -> str:
        return "You didn't provide an API key: send Authorization: Bearer <key>."

    def parse(self, body: Any, *, counting: bool = False) -> Conversation:
        body = as_object(body, "body")
        refuse_streaming(body)
        messages = as_list(body.get("messages"), "messages")
        if not messages:
            raise BadRequest("messages: at least one message is required")
        system: list[str] = []
        turns: list[Turn] = []
        results: list[ToolResult] = []
        for index, message in enumerate(messages):
            where = f"messages.{index}"
            message = as_object(message, where)
            role = message.get("role")
            content = message.get("content")
            if role == "tool":
                call_id = get_str(message, "tool_call_id", f"{where}.")
                results.append(ToolResult(call_id, text_of(content, f"{where}.content")))
                continue
            if results:
                turns.append(Turn(role="user", tool_results=tuple(results)))
                results = []
            if role in ("system", "developer"):
                system.append(text_of(content, f"{where}.content"))
            elif role == "user":
                turns.append(Turn(role="user", text=text_of(content, f"{where}.content")))
            elif role == "assistant":
                calls = as_list(message.get("tool_calls") or [], f"{where}.tool_calls")
                turns.append(
                    Turn(
                        role="assistant",
                        text=text_of(content, f"{where}.content"),
                        tool_calls=tuple(
                            _call(call, f"{where}.tool_calls.{i}") for i, call in enumerate(calls)
                        ),
                    )
                )
            else:
                raise BadRequest(f"{where}.role: unknown role {role!r}")
        if results:
            turns.append(Turn(role="user", tool_results=tuple(results)))
        check_tool_pairing(tuple(turns))
        tools = as_list(body.get("tools") or [], "tools")
        return Conversation(
            model=get_str(body, "model", ""),
            system="\n".join(system),
            turns=tuple(turns),
            tools=tuple(_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)),
            max_tokens=get_max_tokens(body, ("max_completion_tokens", "max_tokens"), False),
        )

    def render(self, reply: Reply, conversation: Conversation, request_id: str) -> Any:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text if reply.text or not reply.calls else None,
            "refusal": None,
        }
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{c.id}",
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": json.dumps(c.input, separators=(",", ":")),
                    },
                }
                for c in reply.calls
            ]
        return {
            "id": "chatcmpl-" + request_id.removeprefix("req_"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": conversation.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _FINISH[reply.stop],
                }
            ],
            "usage": {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
            },
        }

    def error(self, status: int, message: str, request_id: str) -> Any:
        kind = kind_for(status)
        return {
            "error": {
                "message": message,
                "type": kind.openai,
                "param": None,
                "code": kind.openai_code,
            }
        }

    def status_for(self, status: int) -> int:
        # Chat Completions has no 529; OpenAI says "overloaded" with a 503.
        return 503 if status == 529 else status

    def rate_headers(self, state: RateState) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit-requests", str(state.limit)),
            ("x-ratelimit-remaining-requests", str(state.remaining)),
            ("x-ratelimit-reset-requests", f"{round(state.reset_s, 3):g}s"),
        ]


def _call(call: Any, where: str) -> ToolCall:
    call = as_object(call, where)
    function = as_object(call.get("function"), f"{where}.function")
    raw = get_str(function, "arguments", f"{where}.function.", default="{}")
    try:
        arguments: Any = json.loads(raw)
    except ValueError:
        arguments = raw  # the real API stores malformed arguments as given
    return ToolCall(
        id=get_str(call, "id", f"{where}."),
        name=get_str(function, "name", f"{where}.function."),
        input=arguments,
    )


def _tool(tool: Any, where: str) -> ToolSpec:
    function = as_object(as_object(tool, where).get("function"), f"{where}.function")
    return ToolSpec(
        name=get_str(function, "name", f"{where}.function."),
        description=get_str(function, "description", f"{where}.function.", default=""),
        schema=function.get("parameters"),
    )
