"""Tools served by MCP servers over stdio, behind the synchronous :class:`Tool` protocol.

An agent lists servers as ``{"name": "echo", "command": "python", "args": [...],
"env": {...}, "cwd": "..."}``. :func:`load_mcp_tools` starts the server, lists its
tools and returns one :class:`McpTool` each.

Naming: every tool is exposed as ``<server>__<tool>`` (characters outside
``[A-Za-z0-9_-]`` become ``_``, cut to 64), always, not only on a clash. Two servers
may both have a ``search``, and one may shadow a built-in; a stable prefix means a
name in a transcript never changes meaning when a server is added. The server is
called with its own, unprefixed name.

Each call opens a fresh stdio session (spawn, handshake, call, shut down). That costs
a process start per call, but a worker thread then holds no event loop, no pipe and
no child process between steps, and a crashed server cannot poison later calls.
The server's environment is the SDK's safe default (PATH, HOME ...) plus ``env``:
worker secrets such as provider API keys are not inherited.

SDK errors are translated here into ToolError, as provider errors are at the
provider adapters; a tool result with ``is_error`` becomes a ToolError too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp_types import CONNECTION_CLOSED, CallToolResult, ContentBlock, EmbeddedResource, TextContent
from mcp_types import Tool as ListedTool
from pydantic import ValidationError

from celeriac.errors import ToolError
from celeriac.tools.base import DETACHED, Tool, ToolContext, ToolSpec

T = TypeVar("T")

SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# A server that pages forever must not hang tool discovery.
MAX_LIST_PAGES = 50


class McpTool:
    """One tool of one MCP server; ``run`` opens a session, calls it and closes it."""

    def __init__(self, spec: ToolSpec, remote_name: str, server: McpServer, timeout_s: float):
        self.spec = spec
        self.remote_name = remote_name
        self._server = server
        self._timeout_s = timeout_s

    def run(self, arguments: dict[str, Any], context: ToolContext = DETACHED) -> str:
        async def call(client: Client) -> CallToolResult:
            return await client.call_tool(self.remote_name, arguments)

        result = self._server.session(call, self._timeout_s)
        text = _text(result)
        if result.is_error:
            raise ToolError(text or "the MCP tool reported an error without a message")
        return text


class McpServer:
    """A validated server entry from an agent's ``mcp_servers`` list."""

    def __init__(self, config: dict[str, Any]):
        name, command = config.get("name"), config.get("command")
        if not isinstance(name, str) or not name or not isinstance(command, str) or not command:
            # Name the keys only: an entry's env may hold the server's credentials.
            keys = sorted(map(str, config))
            raise ToolError(f"an MCP server needs a 'name' and a 'command', got keys {keys}")
        self.name = name
        try:
            self.params = StdioServerParameters(
                command=command,
                args=config.get("args") or [],
                env=config.get("env"),
                cwd=config.get("cwd"),
            )
        except ValidationError as exc:
            fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
            raise ToolError(f"invalid settings for MCP server {name!r}: {fields}") from None

    def session(self, work: Callable[[Client], Awaitable[T]], timeout_s: float) -> T:
        """Run ``work`` in a fresh session, synchronously; every failure is a ToolError."""

        async def main() -> T:
            # The deadline covers spawn and handshake too: a server that never answers
            # the handshake must not hold a worker thread forever.
            with anyio.fail_after(timeout_s):
                async with Client(self.params, read_timeout_seconds=timeout_s, cache=None) as c:
                    return await work(c)

        try:
            return _run_sync(main)
        except Exception as exc:
            raise self._translate(exc, timeout_s) from exc

    def _translate(self, exc: BaseException, timeout_s: float) -> ToolError:
        # The SDK's task groups wrap failures in exception groups, often nested:
        # the first leaf is the one that tore the session down.
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        prefix = f"MCP server {self.name!r}"
        if isinstance(exc, TimeoutError):
            return ToolError(f"{prefix} timed out after {timeout_s:g}s")
        if isinstance(exc, MCPError):
            if exc.code == CONNECTION_CLOSED:
                return ToolError(f"{prefix} closed the connection (see its stderr)")
            return ToolError(f"{prefix} error: {exc.message}")
        if isinstance(exc, OSError):
            return ToolError(f"could not start {prefix}: {exc}")
        # Other failures (bad JSON on stdout, a broken pipe) have no stable type.
        return ToolError(f"{prefix} failed: {type(exc).__name__}: {exc}")


def load_mcp_tools(server: dict[str, Any], timeout_s: float = 20) -> list[Tool]:
    """Start ``server``, list its tools and return them named ``<server>__<tool>``."""
    mcp_server = McpServer(server)

    async def list_all(client: Client) -> list[ListedTool]:
        tools: list[ListedTool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    listed = mcp_server.session(list_all, timeout_s)
    result: list[Tool] = []
    for tool in listed:
        spec = ToolSpec(
            name=qualified_name(mcp_server.name, tool.name),
            description=tool.description or f"{tool.name} (from MCP server {mcp_server.name})",
            input_schema=tool.input_schema,
        )
        result.append(McpTool(spec, tool.name, mcp_server, timeout_s))
    return result


def qualified_name(server: str, tool: str) -> str:
    """``<server>__<tool>``, made safe for provider tool-name rules (``[A-Za-z0-9_-]{1,64}``)."""
    return _UNSAFE.sub("_", f"{server}{SEPARATOR}{tool}")[:64]


def _text(result: CallToolResult) -> str:
    """Text blocks verbatim; other blocks as a placeholder the model can reason about."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _block_text(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, EmbeddedResource):
        text = getattr(block.resource, "text", None)
        if isinstance(text, str):
            return text
    return f"[{block.type} content omitted]"


def _run_sync(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion from synchronous code.

    Worker threads have no event loop, so ``anyio.run`` starts a private one. If the
    caller is itself inside a running loop, ``anyio.run`` would refuse: run the loop
    on a helper thread instead (blocking the caller, which asked for a sync call).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(main)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, main).result()
