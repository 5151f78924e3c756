"""LLM providers behind one interface: Anthropic and OpenAI through their official
SDKs. The simulated provider (``simulator``) is a real HTTP server that both
adapters reach through their SDKs, so there is no fake adapter."""

from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Provider, Usage

__all__ = ["LLMRequest", "LLMResponse", "Provider", "Usage"]
