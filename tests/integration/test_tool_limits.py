"""A tool that runs past its time limit does not hold its step: the step stops
waiting, records a ``tool_timeout`` error result the model sees, and the run goes
on. A real worker (threads pool) runs a tool that sleeps far longer than its limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from celeriac.store import Step
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, start_worker
from tests.support.waiting import wait_for

TOOL_LIMITS_DB = 9
SLEEP_S = 8
AGENT = """
[agents.slowpoke]
description = "Calls a tool that takes too long."

[[agents.slowpoke.versions]]
version = "1"
weight = 100
model = "claude-haiku-4-20250514"
tools = ["sleep"]
max_steps = 4
max_tokens = 256
system_prompt = "Sleep when asked."
tool_timeout_s = 30
tool_timeouts = { sleep = 1.5 }
"""


@pytest.fixture
def slow_stack(redis_server: RedisServer, simulator: Any, tmp_path: Path
               ) -> Iterator[tuple[Flask, dict[str, str]]]:
    redis_url = redis_server.url(TOOL_LIMITS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["CELERIAC_CONFIG_DIR"] = str(config_with_agents(tmp_path / "config", AGENT))
    env["CELERIAC_EXTRA_TOOLS"] = "tests.chaos.tools:make_tools"
    app = create_app(settings_from(env), configure_logs=False)
    yield app, env
    app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def test_a_tool_past_its_time_limit_becomes_a_tool_timeout_error(
    slow_stack: tuple[Flask, dict[str, str]], tmp_path: Path
) -> None:
    app, env = slow_stack
    client = app.test_client()
    worker = start_worker(env, tmp_path, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=2)
    try:
        task_id = submit(client, {"agent": "slowpoke",
                                  "input": f'[tool:sleep {{"seconds": {SLEEP_S}}}]'})
        doc = wait_terminal(client, task_id, timeout=60)
        # The model got the error as the tool's result and answered; the run went on.
        assert doc["status"] == "completed", doc
        assert "did not finish within its time limit of 1.5 s" in doc["result"]
        db = app.extensions["celeriac"].services.db
        with db.reader() as s:
            step = s.get(Step, f"{task_id}-0-tool-0")
            assert step is not None
            assert step.error_code == "tool_timeout"
            assert step.output is not None and step.output["is_error"] is True
            # The step stopped waiting at the limit, not when the tool finished.
            assert step.latency_ms is not None and 1400 < step.latency_ms < SLEEP_S * 1000
        assert '"tool_abandoned"' in worker.log()
        # The abandoned thread is not lost from sight: its end is logged too.
        wait_for(lambda: '"tool_abandoned_finished"' in worker.log(), timeout=SLEEP_S + 10,
                 what="the abandoned tool thread to finish")
    finally:
        worker.stop()
