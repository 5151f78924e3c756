"""OpenAI Chat Completions through the official SDK; SDK retries off."""

from __future__ import annotations

from typing import Any

import openai

from celeriac.conversation.messages import from_openai_message, openai_tools, to_openai
from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Usage
from celeriac.gateway.providers.errors import translate

_RATE_HEADER_PREFIXES = ("x-ratelimit-", "retry-after")
_STOP_REASONS = {"tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens"}


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None, timeout_s: float):
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def count_tokens(self, request: LLMRequest) -> int | None:
        # The SDK has no counting call, and tiktoken fetches its tables from the
        # internet on first use: the caller's estimate stands in.
        return None

    def complete(self, request: LLMRequest) -> LLMResponse:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": to_openai(request.system, request.messages),
        }
        if request.tools:
            kwargs["tools"] = openai_tools(request.tools)
        if request.headers:
            kwargs["extra_headers"] = request.headers
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
            completion = raw.parse()
        except openai.OpenAIError as exc:
            raise translate(exc, openai, self.name) from None
        choice = completion.choices[0]
        usage = completion.usage
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        prompt = usage.prompt_tokens if usage is not None else 0
        return LLMResponse(
            model=completion.model,
            content=from_openai_message(choice.message.model_dump()),
            stop_reason=_STOP_REASONS.get(choice.finish_reason or "", "end_turn"),
            usage=Usage(
                # OpenAI counts cached tokens inside prompt_tokens; price them apart.
                input_tokens=prompt - cached,
                output_tokens=usage.completion_tokens if usage is not None else 0,
                cache_read_tokens=cached,
            ),
            rate_headers={
                k.lower(): v
                for k, v in raw.headers.items()
                if k.lower().startswith(_RATE_HEADER_PREFIXES)
            },
            request_id=raw.headers.get("x-request-id"),
        )
