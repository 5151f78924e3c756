"""Provider clients, built once per process from explicit keys and URLs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from celeriac.catalog import ModelSpec
from celeriac.errors import ProviderNotConfigured
from celeriac.providers.anthropic import AnthropicProvider
from celeriac.providers.base import Provider
from celeriac.providers.openai import OpenAIProvider

_FACTORIES: dict[str, Callable[..., Provider]] = {
    "anthropic": AnthropicProvider,
    "openai": OpenAIProvider,
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
                client = _FACTORIES[model.provider](
                    api_key=endpoint.api_key, base_url=endpoint.base_url, timeout_s=self._timeout_s
                )
                self._clients[model.provider] = client
            return client
