"""Tracing: one trace from the HTTP request through every step task (across the
worker process) down to each provider and tool call; the trace id in log lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from app import create_app
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, start_worker
from tests.support.waiting import wait_for

TRACING_DB = 1


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_trace_from_request_to_provider_and_tool_calls(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> None:
    redis_url = redis_server.url(TRACING_DB)
    redis.Redis.from_url(redis_url).flushdb()
    web_spans, worker_spans = tmp_path / "web.jsonl", tmp_path / "worker.jsonl"
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    app = create_app(settings_from({**env, "CELERIAC_TRACING": f"jsonl:{web_spans}"}),
                     configure_logs=False)
    worker = start_worker({**env, "CELERIAC_TRACING": f"jsonl:{worker_spans}"}, tmp_path,
                          ping=app.extensions["celeriac"].queue.celery)
    try:
        client = app.test_client()
        task_id = submit(client, {"input": "What is 17 * 23?"})
        assert wait_terminal(client, task_id)["status"] == "completed"
        request = next(s for s in _spans(web_spans) if s["name"].startswith("POST"))
        trace_id = request["trace_id"]

        def all_spans_in() -> list[dict[str, Any]] | None:
            mine = [s for s in _spans(worker_spans) if s["trace_id"] == trace_id]
            names = [s["name"] for s in mine]
            wanted = (names.count("llm.call") == 2 and names.count("tool.call") == 1
                      and sum(n.startswith("run/") for n in names) == 3)
            return mine if wanted else None

        spans = wait_for(all_spans_in, timeout=30, what="the worker's spans in the trace")
        by_id = {s["span_id"]: s for s in spans}
        for call in (s for s in spans if s["name"] in ("llm.call", "tool.call")):
            assert by_id[call["parent_id"]]["name"].startswith("run/celeriac.")
        assert {s["attributes"].get("llm.model") for s in spans if s["name"] == "llm.call"} \
            == {"claude-sonnet-4-20250514"}
        # Log lines written inside those spans carry the trace id.
        logged = [json.loads(line) for line in worker.log().splitlines()
                  if line.startswith("{") and '"llm_call"' in line]
        assert any(entry.get("trace_id") == trace_id for entry in logged)
    finally:
        worker.stop()
        redis.Redis.from_url(redis_url).flushdb()
