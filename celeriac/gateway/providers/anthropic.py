"""Anthropic Messages API through the official SDK. SDK retries are off: Celery
owns retries, so every attempt is visible and counted."""

from __future__ import annotations

from typing import Any

import anthropic

from celeriac.conversation.messages import Block
from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Usage
from celeriac.gateway.providers.errors import translate

_RATE_HEADER_PREFIXES = ("anthropic-ratelimit-", "retry-after")


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str | None, timeout_s: float):
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def complete(self, request: LLMRequest) -> LLMResponse:
        kwargs = _prompt(request)
        kwargs["max_tokens"] = request.max_tokens
        try:
            raw = self._client.messages.with_raw_response.create(**kwargs)
            message = raw.parse()
        except anthropic.AnthropicError as exc:
            raise translate(exc, anthropic, self.name) from None
        usage = message.usage
        return LLMResponse(
            model=message.model,
            content=[_block(b) for b in message.content],
            stop_reason=_stop_reason(message.stop_reason),
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_write_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
                cache_read_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
            ),
            rate_headers={
                k.lower(): v
                for k, v in raw.headers.items()
                if k.lower().startswith(_RATE_HEADER_PREFIXES)
            },
            request_id=raw.headers.get("request-id"),
        )


    def count_tokens(self, request: LLMRequest) -> int | None:
        """Anthropic's free counting endpoint: exact, and never billed."""
        try:
            return int(self._client.messages.count_tokens(**_prompt(request)).input_tokens)
        except anthropic.AnthropicError as exc:
            raise translate(exc, anthropic, self.name) from None


def _prompt(request: LLMRequest) -> dict[str, Any]:
    """The request's prompt as the SDK takes it, for a call and for a count alike."""
    kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.system:
        kwargs["system"] = request.system
    if request.tools:
        kwargs["tools"] = request.tools
    if request.headers:
        kwargs["extra_headers"] = request.headers
    return kwargs


def _block(block: Any) -> Block:
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    # Thinking and other block kinds are kept but not interpreted.
    dumped: Block = block.model_dump()
    return dumped


def _stop_reason(reason: str | None) -> str:
    if reason in ("tool_use", "max_tokens"):
        return reason
    return "end_turn"
