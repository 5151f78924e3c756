"""Provider clients, built once per process from explicit keys and URLs.

Every client is wrapped in a ``Redacted`` provider: what a provider sends back (its
answers, tool-call arguments included, and its error messages) is outside text, and
some providers and gateways repeat the caller's key in a 401 or 400 body. Redacting
here, for both SDKs at once, keeps it out of everything downstream: the store, the
journal, the cache, the status document, the stream, webhooks and logs.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, replace

from celeriac.catalog import ModelSpec
from celeriac.errors import ProviderError, ProviderNotConfigured
from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Provider
from celeriac.redaction import NO_SECRETS, Redactor

# Adapters are imported on first use: each SDK costs 10-25 MB per process, and a
# deployment often uses one provider only.
_ADAPTERS = {
    "anthropic": ("celeriac.gateway.providers.anthropic", "AnthropicProvider"),
    "openai": ("celeriac.gateway.providers.openai", "OpenAIProvider"),
}


@dataclass(frozen=True)
class ProviderEndpoint:
    api_key: str
    base_url: str | None


class Redacted:
    """A provider whose answers and errors come back with every secret redacted."""

    def __init__(self, inner: Provider, redactor: Redactor):
        self.name = inner.name
        self._inner = inner
        self._redactor = redactor

    def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            response = self._inner.complete(request)
        except ProviderError as exc:
            raise self._redacted(exc) from None
        redact = self._redactor
        return replace(
            response,
            model=redact.text(response.model),
            content=redact.value(response.content),
            request_id=redact.text(response.request_id) if response.request_id else None,
        )

    def count_tokens(self, request: LLMRequest) -> int | None:
        try:
            return self._inner.count_tokens(request)
        except ProviderError as exc:
            raise self._redacted(exc) from None

    def _redacted(self, exc: ProviderError) -> ProviderError:
        # The error was made by our own translation (providers.errors) for this call
        # alone: redacting it in place keeps its class, status and retry-after.
        exc.message = self._redactor.text(exc.message)
        exc.args = (exc.message,)
        return exc


class ProviderRegistry:
    def __init__(self, endpoints: dict[str, ProviderEndpoint], *, timeout_s: float = 60.0,
                 redactor: Redactor = NO_SECRETS):
        self._endpoints = endpoints
        self._timeout_s = timeout_s
        self._redactor = redactor
        self._clients: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def configured(self, provider: str) -> bool:
        return provider in self._endpoints

    def check(self, model: ModelSpec) -> None:
        if not self.configured(model.provider):
            raise ProviderNotConfigured(
                f"model {model.id!r} needs provider {model.provider!r}, which has no API key "
                f"configured (set {model.provider.upper()}_API_KEY)",
                field="model",
            )

    def for_model(self, model: ModelSpec) -> Provider:
        self.check(model)
        with self._lock:
            client = self._clients.get(model.provider)
            if client is None:
                endpoint = self._endpoints[model.provider]
                module, name = _ADAPTERS[model.provider]
                factory = getattr(importlib.import_module(module), name)
                client = Redacted(factory(
                    api_key=endpoint.api_key, base_url=endpoint.base_url, timeout_s=self._timeout_s
                ), self._redactor)
                self._clients[model.provider] = client
            return client
