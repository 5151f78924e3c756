"""Cancellation, redelivery, the event stream: a run's life on a real worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from celeriac.execution.priority import QUEUES
from celeriac.store import Step
from config.celery import LLM_STEP, TOOL_STEP
from tests.conftest import REDIS_DB, Stack, settings_from, stack_env
from tests.support.runs import status, submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for


def _step(stack: Stack, step_id: str) -> Step:
    return _stored_step(stack.app, step_id)


def _stored_step(app: Flask, step_id: str) -> Step:
    db = app.extensions["celeriac"].services.db
    with db.reader() as s:
        step = s.get(Step, step_id)
        assert step is not None
        return step


def _calls_for(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return [e for e in stack.sim_log() if (e.get("step") or "").startswith(run_id)]


def test_cancel_stops_a_running_task_before_its_next_step(stack: Stack) -> None:
    task_id = submit(
        stack.client,
        # Long enough that the cancel surely lands while the first call is in flight.
        {"input": "What is 6 * 7?", "metadata": {"simulator": {"latency_ms": 5000}}},
    )
    wait_for(lambda: status(stack.client, task_id)["status"] == "running", timeout=30,
             what="task to start")
    response = stack.client.post(f"/agent/cancel/{task_id}")
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    # The in-flight LLM call finishes and is recorded, but nothing runs after it.
    first = f"{task_id}-0-llm"
    wait_for(lambda: _step(stack, first).status in ("completed", "cancelled"), timeout=30,
             what="in-flight step to settle")
    doc = status(stack.client, task_id)
    assert doc["status"] == "cancelled"
    assert doc["error"]["code"] == "cancelled"
    assert [s["kind"] for s in doc["steps"]] == ["llm"]
    assert len(_calls_for(stack, task_id)) == 1
    # Cancelling again is harmless.
    assert stack.client.post(f"/agent/cancel/{task_id}").get_json()["status"] == "cancelled"


@pytest.fixture
def idle(redis_server: RedisServer, simulator: Any,
         tmp_path: Path) -> Iterator[tuple[Flask, dict[str, str], list[WorkerProcess]]]:
    """The web app on a Redis database no worker consumes (yet); the test starts one
    and appends it to the list, stopped here."""
    redis_url = redis_server.url(REDIS_DB["scratch"])
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    workers: list[WorkerProcess] = []
    yield app, env, workers
    for worker in workers:
        worker.stop()
    app.extensions["celeriac"].services.db.dispose()
    broker.flushdb()


def test_cancelling_a_queued_task_runs_none_of_it(idle: Any, tmp_path: Path) -> None:
    app, env, workers = idle
    client = app.test_client()
    broker = redis.Redis.from_url(env["REDIS_URL"])
    sim_log = f"{env['CELERIAC_SIMULATOR_URL']}/_sim/log"
    task_id = submit(client, {"input": "What is 17 * 23?"})
    first = f"{task_id}-0-llm"
    wait_for(lambda: sum(broker.llen(q) for q in QUEUES) == 1, timeout=30,
             what="the first step's message to wait in the broker")
    response = client.post(f"/agent/cancel/{task_id}")
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    # The revoke went to no worker: the one started now has not heard of it, and
    # only the store can stop it from running the step.
    celery = app.extensions["celeriac"].queue.celery
    workers.append(start_worker(env, tmp_path, ping=celery, concurrency=2))
    wait_for(lambda: _stored_step(app, first).deliveries >= 1, timeout=60,
             what="the worker to take the cancelled step's message")
    wait_for(lambda: sum(broker.llen(q) for q in QUEUES) == 0, timeout=30,
             what="the queues to drain")
    doc = status(client, task_id)
    assert doc["status"] == "cancelled"
    assert doc["error"]["code"] == "cancelled"
    assert doc["steps"] and {s["status"] for s in doc["steps"]} == {"cancelled"}
    assert _stored_step(app, first).status == "cancelled"
    calls = [e for e in httpx.get(sim_log, timeout=5).json()
             if (e.get("step") or "").startswith(task_id)]
    assert calls == []


def test_redelivered_steps_do_not_call_provider_or_tool_again(stack: Stack) -> None:
    task_id = submit(stack.client, {"input": "What is 17 * 23?"})
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "completed"
    calls_before = len(_calls_for(stack, task_id))
    assert calls_before == 2
    celery = stack.app.extensions["celeriac"].queue.celery
    redelivered = {f"{task_id}-0-llm": LLM_STEP, f"{task_id}-0-tool-0": TOOL_STEP,
                   f"{task_id}-1-llm": LLM_STEP}
    before = {step_id: _step(stack, step_id).deliveries for step_id in redelivered}
    for step_id, name in redelivered.items():
        celery.send_task(name, args=[step_id], queue="default")
    for step_id in redelivered:
        wait_for(lambda sid=step_id: _step(stack, sid).deliveries == before[sid] + 1,
                 timeout=30, what=f"redelivery of {step_id}")
    assert len(_calls_for(stack, task_id)) == calls_before
    tool = _step(stack, f"{task_id}-0-tool-0")
    assert tool.attempts == 1
    after = status(stack.client, task_id)
    assert after["usage"] == doc["usage"]
    assert [s["status"] for s in after["steps"]] == ["completed"] * 3


def test_a_duplicate_delivered_during_the_call_is_not_executed_twice(stack: Stack) -> None:
    task_id = submit(
        stack.client,
        {"input": "Hello slow", "metadata": {"simulator": {"latency_ms": 1000}}},
    )
    step_id = f"{task_id}-0-llm"
    wait_for(lambda: _step(stack, step_id).status == "running", timeout=30,
             what="first delivery to claim the step")
    celery = stack.app.extensions["celeriac"].queue.celery
    celery.send_task(LLM_STEP, args=[step_id], queue="high")
    wait_for(lambda: _step(stack, step_id).deliveries >= 2, timeout=30, what="duplicate")
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "completed"
    assert len(_calls_for(stack, task_id)) == 1


@pytest.fixture
def live_stack(stack: Stack) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _read_events(url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers or {}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "event" in current:
                    events.append(current)
                current = {}
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return events


def test_event_stream_reports_changes_and_resumes(stack: Stack, live_stack: str) -> None:
    task_id = submit(
        stack.client,
        # Each call lasts 5 of the stream's 0.2 s polls, so the middle states are seen.
        {"input": "What is 17 * 23?", "metadata": {"simulator": {"latency_ms": 1000}}},
    )
    events = _read_events(f"{live_stack}/agent/events/{task_id}")
    statuses = [e for e in events if e["event"] == "status"]
    assert len(statuses) >= 3  # queued/running, the tool turn, completion
    assert events[-1]["event"] == "end"
    assert statuses[-1]["data"]["status"] == "completed"
    assert "391" in statuses[-1]["data"]["result"]
    ids = [e["id"] for e in statuses]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Resuming after the last event id sends nothing old, only the end.
    resumed = _read_events(
        f"{live_stack}/agent/events/{task_id}", headers={"Last-Event-ID": str(ids[-1])}
    )
    assert [e["event"] for e in resumed] == ["end"]
    # Resuming from an earlier id sends the current state again.
    again = _read_events(
        f"{live_stack}/agent/events/{task_id}", headers={"Last-Event-ID": str(ids[0] - 1)}
    )
    assert again[0]["event"] == "status" and again[0]["id"] == ids[-1]
