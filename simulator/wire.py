"""What a wire format must do, and the checks both formats use to read a request.

A wire format turns a request body into a ``Conversation`` and a ``Reply`` or an
error into a body, and names its own headers. Shape errors name the field that is
wrong ("messages.2.content"), as the real APIs do, so a bad adapter is quick to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from simulator.conversation import Conversation, Turn
from simulator.errors import BadRequest
from simulator.limiter import RateState
from simulator.script import Reply


class Wire(Protocol):
    name: str  # "anthropic" | "openai", as written to the request log
    request_id_header: str

    def api_key(self, headers: Mapping[str, str]) -> str | None: ...

    def missing_key_message(self) -> str: ...

    def parse(self, body: Any, *, counting: bool = False) -> Conversation: ...

    def render(self, reply: Reply, conversation: Conversation, request_id: str) -> Any: ...

    def error(self, status: int, message: str, request_id: str) -> Any: ...

    def status_for(self, status: int) -> int: ...

    def rate_headers(self, state: RateState) -> list[tuple[str, str]]: ...


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object")
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a list")
    return value


def get_str(obj: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key}: expected a string")
    return value


def get_max_tokens(obj: Mapping[str, Any], keys: tuple[str, ...], required: bool) -> int | None:
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{key}: expected a positive integer")
        return value
    if required:
        raise BadRequest(f"{keys[0]}: field required")
    return None


def refuse_streaming(body: Mapping[str, Any]) -> None:
    if body.get("stream"):
        raise BadRequest("stream: the simulator does not stream; send stream=false")


def text_of(content: Any, where: str) -> str:
    """Text of a string or of a list of parts; parts that are not text (images,
    documents) are skipped, as the script has no use for them."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for index, part in enumerate(as_list(content, where)):
        part = as_object(part, f"{where}.{index}")
        if part.get("type") == "text":
            texts.append(get_str(part, "text", f"{where}.{index}."))
    return "\n".join(texts)


def check_tool_pairing(turns: tuple[Turn, ...]) -> None:
    """Refuse what both real APIs refuse: a tool result that answers no call in the
    message just before it, and a call left unanswered by the message after it."""
    for index, turn in enumerate(turns):
        if turn.tool_results:
            before = turns[index - 1] if index > 0 else None
            asked = {c.id for c in before.tool_calls} if before is not None else set()
            for result in turn.tool_results:
                if result.call_id not in asked:
                    raise BadRequest(
                        f"messages: tool result for {result.call_id!r} answers no tool "
                        "call in the message before it"
                    )
        if turn.tool_calls and index + 1 < len(turns):
            answered = {r.call_id for r in turns[index + 1].tool_results}
            missing = [c.id for c in turn.tool_calls if c.id not in answered]
            if missing:
                raise BadRequest(
                    f"messages: tool call(s) {', '.join(missing)} have no tool result "
                    "in the message after them"
                )
