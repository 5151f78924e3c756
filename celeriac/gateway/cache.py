"""Response cache: identical requests (model, system, messages, tools, max_tokens)
served from Redis for agents that opt in (``cache_ttl_s`` > 0). A hit costs nothing
and is recorded on its step."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis import Redis

from celeriac import redis_keys as keys
from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Usage


def request_digest(request: LLMRequest) -> str:
    canonical = json.dumps(
        {
            "model": request.model,
            "system": request.system,
            "messages": request.messages,
            "tools": request.tools,
            "max_tokens": request.max_tokens,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, redis: Redis):
        self.redis = redis

    def get(self, request: LLMRequest) -> LLMResponse | None:
        raw = self.redis.get(keys.response_cache(request_digest(request)))
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        return LLMResponse(
            model=data["model"],
            content=data["content"],
            stop_reason=data["stop_reason"],
            usage=Usage(**data["usage"]),
        )

    def put(self, request: LLMRequest, response: LLMResponse, ttl_s: int) -> None:
        payload = json.dumps(
            {
                "model": response.model,
                "content": response.content,
                "stop_reason": response.stop_reason,
                "usage": response.usage.to_dict(),
            }
        )
        self.redis.set(keys.response_cache(request_digest(request)), payload, ex=ttl_s)
