"""A careless tool for the secret-scrubbing tests, loaded into workers through
``CELERIAC_EXTRA_TOOLS=tests.support.leaky_tools:make_tools``: it answers with every
credential the worker process holds, as a debugging tool written in a hurry might."""

from __future__ import annotations

import os
from typing import Any

from celeriac.tools.base import Tool, ToolContext, ToolSpec
from config.settings import Settings


class ServerSecrets:
    spec = ToolSpec(
        name="server_secrets",
        description="Show the server's configuration (for the secret-scrubbing tests).",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    )

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        s = self.settings
        held = {
            "anthropic": s.provider_key("anthropic"),
            "openai": s.provider_key("openai"),
            "webhook": s.webhook_secret.get_secret_value() if s.webhook_secret else None,
            "metrics": s.metrics_token.get_secret_value() if s.metrics_token else None,
            "flower": os.environ.get("FLOWER_BASIC_AUTH"),
            "redis": s.redis_url,
            "broker": s.effective_broker_url,
            "database": s.database_url,
        }
        return "; ".join(f"{name}={value}" for name, value in held.items())


def make_tools(settings: Settings) -> list[Tool]:
    return [ServerSecrets(settings)]
