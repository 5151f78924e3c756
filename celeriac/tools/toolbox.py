"""The tools an agent version may use: the built-ins it names, plus the tools of
the MCP servers it configures (loaded once per process and server).

A tool's result is outside text (a file, a web page, an MCP server's answer or
error): it comes back with every secret redacted, before the model, the journal or
the store sees it."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from celeriac.catalog import AgentVersion
from celeriac.redaction import NO_SECRETS, Redactor
from celeriac.tools.base import ToolContext, ToolRegistry, ToolResult


class Toolbox:
    def __init__(self, builtins: ToolRegistry, redactor: Redactor = NO_SECRETS):
        self._builtins = builtins
        self._redactor = redactor
        self._mcp: dict[str, ToolRegistry] = {}
        self._lock = threading.Lock()

    def _mcp_registry(self, server: dict[str, Any]) -> ToolRegistry:
        key = repr(sorted(server.items()))
        with self._lock:
            registry = self._mcp.get(key)
            if registry is None:
                # Imported on first use: the MCP SDK costs ~25 MB per worker process.
                from celeriac.tools.mcp import load_mcp_tools

                registry = ToolRegistry()
                for tool in load_mcp_tools(server):
                    registry.register(tool)
                self._mcp[key] = registry
            return registry

    def _registries(self, version: AgentVersion) -> list[tuple[ToolRegistry, list[str]]]:
        pairs = [(self._builtins, list(version.tools))]
        for server in version.mcp_servers:
            registry = self._mcp_registry(server)
            pairs.append((registry, registry.names()))
        return pairs

    def specs(self, version: AgentVersion) -> list[dict[str, Any]]:
        specs: list[dict[str, Any]] = []
        for registry, names in self._registries(version):
            specs.extend(registry.specs(names))
        return specs

    def execute(
        self,
        version: AgentVersion,
        name: str,
        arguments: dict[str, Any],
        context: ToolContext,
    ) -> ToolResult:
        for registry, names in self._registries(version):
            if name in names:
                result = registry.execute(name, arguments, context)
                return replace(result, content=self._redactor.text(result.content))
        return ToolResult(
            content=f"tool {name!r} is not available to agent {version.ref}", is_error=True
        )
