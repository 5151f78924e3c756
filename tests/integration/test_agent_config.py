"""Agents from configuration: MCP tools over stdio, tool errors shown to the model,
versions with traffic weights, pinning, and explicit agent@version."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import submit, wait_terminal
from tests.support.services import PROJECT_DIR, RedisServer, WorkerProcess, start_worker

CONFIG_DB = 5
MCP_SERVER = PROJECT_DIR / "tests" / "fixtures" / "mcp_echo_server.py"

EXTRA_AGENTS = f'''
[agents.mcp]
description = "Uses tools from an MCP server over stdio."

[[agents.mcp.versions]]
version = "1"
model = "claude-haiku-4-20250514"
tools = ["calculator"]
mcp_servers = [{{ name = "echo", command = "{sys.executable}", args = ["{MCP_SERVER}"] }}]
max_steps = 4

[agents.ab]
description = "Two live versions, 50/50."

[[agents.ab.versions]]
version = "1"
weight = 50
model = "claude-haiku-4-20250514"
system_prompt = "version one"

[[agents.ab.versions]]
version = "2"
weight = 50
model = "gpt-4o-mini"
system_prompt = "version two"
'''


@pytest.fixture(scope="module")
def configured(redis_server: RedisServer, simulator: Any,
               tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Flask, WorkerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("agents")
    config = config_with_agents(tmp / "config", EXTRA_AGENTS)
    redis_url = redis_server.url(CONFIG_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env["CELERIAC_CONFIG_DIR"] = str(config)
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery)
    yield app, worker, config
    worker.stop()
    redis.Redis.from_url(redis_url).flushdb()


def test_an_agent_uses_a_tool_from_an_mcp_server(configured: Any) -> None:
    app, _worker, _config = configured
    client = app.test_client()
    task_id = submit(client, {"input": '[tool:echo__add {"a": 2, "b": 40}]', "agent": "mcp"})
    doc = wait_terminal(client, task_id, timeout=60)
    assert doc["status"] == "completed", doc
    tool = next(s for s in doc["steps"] if s["kind"] == "tool")
    assert tool["name"] == "echo__add"
    assert "42" in tool["output"]
    assert "42" in doc["result"]


def test_a_tool_error_is_a_result_the_model_sees(configured: Any) -> None:
    app, _worker, _config = configured
    client = app.test_client()
    task_id = submit(client, {"input": "What is 1 / 0?", "agent": "mcp"})
    doc = wait_terminal(client, task_id, timeout=60)
    assert doc["status"] == "completed"  # not a crash
    tool = next(s for s in doc["steps"] if s["kind"] == "tool")
    assert tool["error"]["code"] == "tool_error"
    assert "zero" in tool["output"].lower()
    assert "failed" in doc["result"].lower()


def test_versions_split_traffic_and_can_be_pinned_without_a_deploy(configured: Any) -> None:
    app, _worker, config = configured
    client = app.test_client()
    ids = [submit(client, {"input": f"hello {i}", "agent": "ab"}) for i in range(24)]
    docs = [wait_terminal(client, task_id) for task_id in ids]
    versions = {d["agent_version"] for d in docs}
    assert versions == {"1", "2"}  # both live versions took traffic
    assert all(d["model"] == ("claude-haiku-4-20250514" if d["agent_version"] == "1"
                              else "gpt-4o-mini") for d in docs)
    explicit = wait_terminal(client, submit(client, {"input": "x", "agent": "ab@2"}))
    assert explicit["agent_version"] == "2"
    # Pin version 1 by editing the file: the running system picks it up.
    text = (config / "agents.toml").read_text()
    (config / "agents.toml").write_text(
        text.replace('description = "Two live versions, 50/50."',
                     'description = "Two live versions, 50/50."\npinned = "1"'))
    pinned = [wait_terminal(client, submit(client, {"input": f"p{i}", "agent": "ab"}))
              for i in range(6)]
    assert {d["agent_version"] for d in pinned} == {"1"}
