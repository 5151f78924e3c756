"""MCP tools against a real MCP server subprocess over stdio (tests/fixtures)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from celeriac.errors import ToolError
from celeriac.tools import Tool, ToolRegistry, ToolResult
from celeriac.tools.mcp import McpTool, load_mcp_tools

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_echo_server.py"


def echo_server(**extra: Any) -> dict[str, Any]:
    return {"name": "echo", "command": sys.executable, "args": [str(SERVER_SCRIPT)], **extra}


@pytest.fixture(scope="module")
def tools() -> list[Tool]:
    return load_mcp_tools(echo_server(env={"CELERIAC_TEST_GREETING": "hello"}))


@pytest.fixture(scope="module")
def registry(tools: list[Tool]) -> ToolRegistry:
    return ToolRegistry(tools)


def by_name(tools: list[Tool], name: str) -> Tool:
    return next(tool for tool in tools if tool.spec.name == name)


def test_lists_the_servers_tools_with_prefixed_names(tools: list[Tool]) -> None:
    names = sorted(tool.spec.name for tool in tools)
    assert names == ["echo__add", "echo__echo", "echo__fail", "echo__getenv"]
    add = by_name(tools, "echo__add")
    assert isinstance(add, McpTool)
    assert add.remote_name == "add"
    assert add.spec.description == "Add two integers."
    assert add.spec.input_schema["required"] == ["a", "b"]
    assert add.spec.input_schema["properties"]["a"]["type"] == "integer"


def test_calls_add_and_echo(registry: ToolRegistry) -> None:
    assert registry.execute("echo__add", {"a": 17, "b": 25}) == ToolResult("42", is_error=False)
    text = 'héllo wörld, "quoted"\nsecond line'
    assert registry.execute("echo__echo", {"text": text}) == ToolResult(text, is_error=False)


def test_a_tool_side_error_becomes_an_error_result(registry: ToolRegistry) -> None:
    result = registry.execute("echo__fail", {"reason": "disk full"})
    assert result.is_error
    assert result.content.startswith("echo__fail failed: ")
    assert "disk full" in result.content


def test_run_raises_tool_error_for_a_tool_side_error(tools: list[Tool]) -> None:
    with pytest.raises(ToolError, match="disk full"):
        by_name(tools, "echo__fail").run({"reason": "disk full"})


def test_arguments_are_checked_before_the_server_is_started(registry: ToolRegistry) -> None:
    result = registry.execute("echo__add", {"a": "seventeen", "b": 25})
    assert result == ToolResult(
        "invalid arguments for echo__add: a: 'seventeen' is not of type 'integer'", is_error=True
    )


def test_arguments_the_server_rejects_are_an_error(tools: list[Tool]) -> None:
    # Bypass the registry's validation to see the server's own rejection come back.
    with pytest.raises(ToolError, match=r"Error executing tool add: .*\nb\n  Field required"):
        by_name(tools, "echo__add").run({"a": 1})


def test_server_sees_its_configured_env_but_not_the_workers_secrets(
    tools: list[Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-must-not-leak")
    getenv = by_name(tools, "echo__getenv")
    assert getenv.run({"name": "CELERIAC_TEST_GREETING"}) == "hello"
    assert getenv.run({"name": "ANTHROPIC_API_KEY"}) == "<unset>"


def test_run_works_from_a_worker_thread(tools: list[Tool]) -> None:
    results: list[str] = []
    worker = threading.Thread(
        target=lambda: results.append(by_name(tools, "echo__add").run({"a": 1, "b": 2}))
    )
    worker.start()
    worker.join(timeout=60)
    assert results == ["3"]


def test_run_works_when_the_caller_already_runs_an_event_loop(tools: list[Tool]) -> None:
    async def inside_a_loop() -> str:
        return by_name(tools, "echo__add").run({"a": 2, "b": 2})

    assert asyncio.run(inside_a_loop()) == "4"


@pytest.mark.parametrize(
    ("server", "complaint"),
    [
        (
            {"name": "gone", "command": "/nonexistent/mcp-server"},
            "could not start MCP server 'gone'",
        ),
        (
            {"name": "quitter", "command": sys.executable, "args": ["-c", "pass"]},
            "MCP server 'quitter' closed the connection",
        ),
        (
            {"name": "chatty", "command": sys.executable, "args": ["-c", "print('hello')"]},
            "MCP server 'chatty' closed the connection",
        ),
        ({"name": "nameless"}, "needs a 'name' and a 'command'"),
        ({"name": "x", "command": "python", "args": "not-a-list"}, "invalid settings"),
    ],
)
def test_broken_servers_raise_tool_error(server: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ToolError, match=complaint):
        load_mcp_tools(server, timeout_s=10)


def test_config_errors_do_not_echo_the_servers_env() -> None:
    bad = {"name": "x", "command": "python", "args": "not-a-list", "env": {"TOKEN": 987654}}
    with pytest.raises(ToolError) as caught:
        load_mcp_tools(bad)
    assert caught.value.message == "invalid settings for MCP server 'x': ['args', 'env.TOKEN']"
    with pytest.raises(ToolError) as caught:
        load_mcp_tools({"env": {"TOKEN": "s3cret"}})
    assert "s3cret" not in caught.value.message


def test_a_server_that_never_answers_times_out() -> None:
    # It reads stdin forever and never replies; it exits when the client closes stdin.
    silent = {
        "name": "silent",
        "command": sys.executable,
        "args": ["-c", "import sys; sys.stdin.read()"],
    }
    with pytest.raises(ToolError, match=r"MCP server 'silent' timed out after 0.5s"):
        load_mcp_tools(silent, timeout_s=0.5)
