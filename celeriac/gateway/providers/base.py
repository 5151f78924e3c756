"""The provider interface: one request in, one response (or a ProviderError) out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from celeriac.conversation.messages import Block, Message


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_tokens
            + self.cache_read_tokens
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class LLMRequest:
    model: str
    system: str
    messages: list[Message]
    tools: list[dict[str, Any]]
    max_tokens: int
    # Extra HTTP headers; the simulated provider reads fault-injection ones.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LLMResponse:
    model: str
    content: list[Block]
    stop_reason: str  # "end_turn" | "tool_use" | "max_tokens"
    usage: Usage
    # Rate-limit headers as the provider sent them (lower-cased names).
    rate_headers: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None


class Provider(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one call. Raises TransientProviderError or PermanentProviderError."""
        ...

    def count_tokens(self, request: LLMRequest) -> int | None:
        """The prompt's input tokens by the provider's own count, or None where the
        SDK offers no way to count (the caller estimates instead)."""
        ...
