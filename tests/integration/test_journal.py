"""A worker killed after the provider answered, or after the tool did its effect,
does not make the step pay or act twice: the answer (the result) waits in the step
journal, and the step's rerun on another worker records it. Deterministic: the
first worker's failpoint fires every time; the second worker has none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from sqlalchemy import select

from app import create_app
from celeriac.store import LedgerEntry, Step
from tests.chaos.tools import EFFECTS, RUNS_PREFIX
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, start_beat, start_worker
from tests.support.waiting import wait_for

JOURNAL_DB = 10
AGENT = """
[agents.effects]
description = "Records one effect."

[[agents.effects.versions]]
version = "1"
weight = 100
model = "claude-haiku-4-20250514"
tools = ["record_effect"]
max_steps = 4
max_tokens = 256
system_prompt = "Record the effect you are asked to record."
"""


@pytest.fixture
def journaled(redis_server: RedisServer, simulator: Any, tmp_path: Path
              ) -> Iterator[tuple[Flask, dict[str, str], redis.Redis]]:
    redis_url = redis_server.url(JOURNAL_DB)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env.update({
        "CELERIAC_CONFIG_DIR": str(config_with_agents(tmp_path / "config", AGENT)),
        "CELERIAC_EXTRA_TOOLS": "tests.chaos.tools:make_tools",
        "CELERIAC_STEP_LEASE_S": "3",
        "CELERIAC_REAP_INTERVAL_S": "1",
    })
    app = create_app(settings_from(env), configure_logs=False)
    beat = start_beat(env, tmp_path)
    try:
        yield app, env, r
    finally:
        beat.terminate()
        beat.wait(20)
        r.flushdb()
        app.extensions["celeriac"].services.db.dispose()


@pytest.mark.parametrize("failpoint", ["after_call", "after_tool"])
def test_a_kill_after_the_answer_replays_it_instead_of_calling_again(
    journaled: tuple[Flask, dict[str, str], redis.Redis], simulator: Any, tmp_path: Path,
    failpoint: str,
) -> None:
    app, env, r = journaled
    client = app.test_client()
    celery = app.extensions["celeriac"].queue.celery
    doomed = start_worker(dict(env, CELERIAC_FAILPOINTS=f"{failpoint}=1"), tmp_path,
                          ping=celery, concurrency=2)
    task_id = submit(client, {"agent": "effects",
                              "input": '[tool:record_effect {"label": "once"}]'})
    # The first step that reaches the failpoint kills its worker.
    doomed.process.wait(60)
    assert f'"failpoint": "{failpoint}"' in doomed.log()
    killed_step = f"{task_id}-0-llm" if failpoint == "after_call" else f"{task_id}-0-tool-0"
    assert f'"step": "{killed_step}"' in doomed.log()
    survivor = start_worker(env, tmp_path, ping=celery, concurrency=2)
    try:
        doc = wait_terminal(client, task_id, timeout=90)
        assert doc["status"] == "completed", doc
        assert "effect once recorded" in doc["result"]
        db = app.extensions["celeriac"].services.db
        with db.reader() as s:
            step = s.get(Step, killed_step)
            assert step is not None and step.recoveries == 1
            assert any("replayed_from" in e for e in step.attempt_log), step.attempt_log
            ledger = list(s.scalars(select(LedgerEntry).where(LedgerEntry.run_id == task_id)))
        # One paid call per LLM step, in the ledger and at the provider.
        assert sorted(row.step_id for row in ledger) == [f"{task_id}-0-llm", f"{task_id}-1-llm"]
        log = httpx.get(f"{simulator.url}/_sim/log", timeout=10).json()
        calls = [e["step"] for e in log if (e.get("step") or "").startswith(task_id)]
        assert sorted(calls) == [f"{task_id}-0-llm", f"{task_id}-1-llm"]
        # The tool ran once and its effect happened once.
        assert r.lrange(RUNS_PREFIX + f"{task_id}-0-tool-0", 0, -1) != []
        assert len(r.lrange(RUNS_PREFIX + f"{task_id}-0-tool-0", 0, -1)) == 1
        assert r.lrange(EFFECTS, 0, -1) == [f"{task_id}-0-tool-0"]
        # The journal is cleared once the outcome is recorded.
        wait_for(lambda: not r.keys("celeriac:journal:*"), timeout=10, what="journal cleared")
    finally:
        survivor.stop()


def test_a_call_its_worker_died_with_is_charged_not_forgotten(
    journaled: tuple[Flask, dict[str, str], redis.Redis], simulator: Any, tmp_path: Path,
) -> None:
    """A worker SIGKILLed while its request is on the wire never sees the answer; the
    provider billed it anyway, and the rerun pays for a second call. The ledger, the
    run's cost and the daily budget count both: the lost one at its reservation."""
    app, env, r = journaled
    client = app.test_client()
    celery = app.extensions["celeriac"].queue.celery
    doomed = start_worker(env, tmp_path, ping=celery, concurrency=2)
    task_id = submit(client, {"input": "Hello", "metadata": {
        "simulator": {"latency_ms": 3000}}})
    step_id = f"{task_id}-0-llm"
    wait_for(lambda: r.keys(f"celeriac:journal:{step_id}:wire:*"), timeout=60,
             what="the first call on the wire")
    doomed.kill()  # SIGKILL, the request sent and its answer 3 s away
    survivor = start_worker(env, tmp_path, ping=celery, concurrency=2)
    try:
        doc = wait_terminal(client, task_id, timeout=90)
        assert doc["status"] == "completed", doc
        db = app.extensions["celeriac"].services.db
        with db.reader() as s:
            ledger = sorted(s.scalars(select(LedgerEntry).where(LedgerEntry.run_id == task_id)),
                            key=lambda row: row.step_id)
            step = s.get(Step, step_id)
            assert step is not None and step.recoveries == 1
        # The provider was paid twice for the step: both calls reached it and answered.
        wait_for(lambda: len([e for e in httpx.get(f"{simulator.url}/_sim/log",
                                                   timeout=10).json()
                              if e.get("step") == step_id and e.get("status") == 200]) == 2,
                 timeout=30, what="both paid calls in the simulator's log")
        assert [row.step_id.split("#")[0] for row in ledger] == [step_id, step_id]
        own, lost = ledger
        assert lost.step_id.startswith(f"{step_id}#w") and own.step_id == step_id
        # The lost call is charged at its reservation: at least what an answer cost.
        assert lost.cost_nanos >= own.cost_nanos > 0
        assert doc["usage"]["cost_usd"] == pytest.approx((own.cost_nanos + lost.cost_nanos) / 1e9)
        spent = int(r.hget(f"celeriac:budget:{own.day}:tenant:{own.tenant}", "spent") or 0)
        assert spent == own.cost_nanos + lost.cost_nanos
        assert not r.keys("celeriac:journal:*:wire:*")  # the note was charged and forgotten
    finally:
        survivor.stop()
