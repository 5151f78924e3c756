"""Provider clients, built once per process from explicit keys and URLs."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from celeriac.catalog import ModelSpec
from celeriac.errors import ProviderNotConfigured
from celeriac.providers.base import Provider

# Adapters are imported on first use: each SDK costs 10-25 MB per process, and a
# deployment often uses one provider only.
_ADAPTERS = {
    "anthropic": ("celeriac.providers.anthropic", "AnthropicProvider"),
    "openai": ("celeriac.providers.openai", "OpenAIProvider"),
}


@dataclass(frozen=True)
class ProviderEndpoint:
    api_key: str
    base_url: str | None


class ProviderRegistry:
    def __init__(self, endpoints: dict[str, ProviderEndpoint], *, timeout_s: float = 60.0):
        self._endpoints = endpoints
        self._timeout_s = timeout_s
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
                client = factory(
                    api_key=endpoint.api_key, base_url=endpoint.base_url, timeout_s=self._timeout_s
                )
                self._clients[model.provider] = client
            return client
