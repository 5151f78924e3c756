"""The simulator's routes, and running it until told to stop.

POST /v1/messages               Anthropic Messages
POST /v1/messages/count_tokens  Anthropic token counting
POST /v1/chat/completions       OpenAI Chat Completions
GET  /_sim/health               {"ok": true}
GET  /_sim/log                  the request log, oldest first
POST /_sim/reset                clear the log and the RPM window, reseed the dice
GET  /_sim/config               the current config
POST /_sim/config               change some settings: {"rpm": 5, ...}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from simulator.config import ConfigError, SimConfig
from simulator.endpoint import model_call
from simulator.http11 import HttpServer, Request, Response
from simulator.state import SimState
from simulator.wire_anthropic import AnthropicWire
from simulator.wire_openai import OpenAIWire

Route = Callable[[Request], Awaitable[Response | None]]


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.state = SimState(config or SimConfig())
        anthropic, openai = AnthropicWire(), OpenAIWire()
        self._routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/messages"): lambda r: model_call(self.state, anthropic, r),
            ("POST", "/v1/messages/count_tokens"): lambda r: model_call(
                self.state, anthropic, r, counting=True
            ),
            ("POST", "/v1/chat/completions"): lambda r: model_call(self.state, openai, r),
            ("GET", "/_sim/health"): self._health,
            ("GET", "/_sim/log"): self._log,
            ("POST", "/_sim/reset"): self._reset,
            ("GET", "/_sim/config"): self._get_config,
            ("POST", "/_sim/config"): self._set_config,
        }

    async def handle(self, request: Request) -> Response | None:
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return await route(request)
        known = any(path == request.path for _, path in self._routes)
        status = 405 if known else 404
        message = f"{request.method} {request.path} is not served by the simulator"
        # Shaped to satisfy both SDKs' error parsers, as the wire format is unknown.
        kind = "invalid_request_error" if known else "not_found_error"
        body = {"type": "error", "error": {"type": kind, "message": message, "code": kind}}
        return Response.json(status, body)

    def close(self) -> None:
        self.state.close()

    async def _health(self, request: Request) -> Response:
        return Response.json(200, {"ok": True})

    async def _log(self, request: Request) -> Response:
        return Response.json(200, self.state.log.entries())

    async def _reset(self, request: Request) -> Response:
        self.state.reset()
        return Response.json(200, {"ok": True})

    async def _get_config(self, request: Request) -> Response:
        return Response.json(200, self.state.config.public())

    async def _set_config(self, request: Request) -> Response:
        try:
            changes = json.loads(request.body or b"{}")
            if not isinstance(changes, dict):
                raise ConfigError("expected a JSON object of settings")
            config = self.state.configure(changes)
        except ValueError as exc:  # ConfigError and bad JSON alike
            return Response.json(400, {"error": {"message": str(exc), "type": "invalid_config"}})
        return Response.json(200, config.public())


async def serve(
    host: str,
    port: int,
    config: SimConfig,
    stop: asyncio.Event,
    on_started: Callable[[int, Simulator], Any] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``on_started`` gets the bound port first."""
    simulator = Simulator(config)
    server = HttpServer(simulator.handle)
    try:
        bound = await server.start(host, port)
        if on_started is not None:
            on_started(bound, simulator)
        await stop.wait()
    finally:
        await server.close()
        simulator.close()
