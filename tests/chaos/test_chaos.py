"""Chaos: 200 tasks, 2 worker processes, 50 SIGKILLs at random points, and nothing
accepted is lost, no effect happens twice, no answer in hand is paid for twice.

Each task is an LLM call that asks for a side-effecting tool (``record_effect``,
tests/chaos/tools.py), the tool call, and a final LLM call, against the simulated
provider over HTTP. Workers die two ways: by their own failpoints (before the
provider call, after its answer, before and after the tool, after the record,
before the ack; ``celeriac/durability/failpoints.py``) and by SIGKILLs from this test at random
times. Every dead worker is replaced. Then:

- every task is ``completed``, with its own effect in its answer (0 lost);
- each tool step's effect was applied exactly once (its idempotency key), and a
  tool whose result was journaled was never run again;
- the ledger holds exactly one paid call per LLM step, and the provider's request
  log shows no step paid twice after its answer had arrived: a step replayed from
  its journal has no request after the journaled answer, and every extra paid
  request of a step was on the wire when a worker died (the killed worker never
  saw that answer: unavoidable without provider-side idempotency), and each of
  those is charged in the ledger (a row of its own, at its reservation);
- every task a kill interrupted made progress again within 60 s.

The figures go to tests/chaos/last-run.json and the test output. Run it with
``make test-chaos``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app import create_app
from celeriac.store import Database
from tests.chaos.figures import verify
from tests.chaos.harness import (
    CHAOS_REDIS_DB,
    KILLS,
    LAST_RUN,
    LATENCY_MS,
    OUTSIDE_KILL_GAP_S,
    RESUME_LIMIT_S,
    RUN_DEADLINE_S,
    STANDBYS,
    STEP_QUEUES,
    SUBMIT_EVERY_S,
    TASKS,
    TOOL_WORK_MS,
    WORKERS,
    Chaos,
)
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import submit
from tests.support.services import (
    IN_CI,
    RedisServer,
    create_postgres_database,
    drop_postgres_database,
    start_beat,
)

pytestmark = pytest.mark.chaos

AGENT = """
[agents.chaos]
description = "Chaos test: an LLM call, a side-effecting tool call, a final LLM call."

[[agents.chaos.versions]]
version = "1"
weight = 100
model = "claude-haiku-4-20250514"
fallbacks = []
tools = ["record_effect"]
max_steps = 4
max_tokens = 256
priority = "normal"
budget_usd = 0.50
system_prompt = "Record the effect you are asked to record."
"""


@pytest.fixture
def chaos_env(redis_server: RedisServer, simulator: Any, tmp_path: Path
              ) -> Iterator[dict[str, str]]:
    created = create_postgres_database()
    if created is None and IN_CI:
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
    # Two worker processes and beat write at once: PostgreSQL is the store this is
    # about; SQLite stands in locally when no PostgreSQL answers.
    database_url = created[0] if created else f"sqlite:///{tmp_path / 'store.db'}"
    config_dir = config_with_agents(tmp_path / "config", AGENT)
    redis_url = redis_server.url(CHAOS_REDIS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, database_url, simulator.url)
    env.update({
        "CELERIAC_CONFIG_DIR": str(config_dir),
        "CELERIAC_EXTRA_TOOLS": "tests.chaos.tools:make_tools",
        # Quick recovery for the test: the lease runs out 5 s after a worker dies
        # (heartbeat every 1.7 s) and the reaper looks every 2 s. The defaults
        # (20 s, 10 s) recover within about 30 s, with room for a loaded machine.
        "CELERIAC_STEP_LEASE_S": "5",
        "CELERIAC_REAP_INTERVAL_S": "2",
        # Dead-lettering stops a poison step that kills every worker that runs it
        # (tests/integration/test_durability.py). Here kills are the test's own,
        # each taking every step its worker holds, and the killer aims at workers
        # that have just taken the recovered steps: six of 200 tasks had a step
        # hit six times in one run. The figures report the most any step took.
        "CELERIAC_MAX_RECOVERIES": "25",
        "CELERIAC_LOG_LEVEL": "INFO",
    })
    try:
        yield env
    finally:
        redis.Redis.from_url(redis_url).flushdb()
        if created:
            drop_postgres_database(created[1])


def test_fifty_kills_over_two_hundred_tasks(chaos_env: dict[str, str], simulator: Any,
                                            tmp_path: Path) -> None:
    env = chaos_env
    app = create_app(settings_from(env), configure_logs=False)
    client = app.test_client()
    db: Database = app.extensions["celeriac"].services.db
    r = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    chaos = Chaos(env, tmp_path, db, random.Random(seed), app.extensions["celeriac"].queue.celery)
    beat = start_beat(env, tmp_path)
    chaos.slots = [chaos.start(",".join(STEP_QUEUES)) for _ in range(WORKERS)]
    chaos.standbys = [chaos.start() for _ in range(STANDBYS)]
    ids: list[str] = []
    started = time.monotonic()
    try:
        next_submit, next_kill, next_check = started, started + 3.0, started
        while True:
            now = time.monotonic()
            assert now - started < RUN_DEADLINE_S, (
                f"chaos run unfinished after {RUN_DEADLINE_S} s: "
                f"{chaos.unfinished(ids)} of {len(ids)} tasks open, {len(chaos.kills)} kills"
            )
            chaos.replace_dead()
            if len(ids) < TASKS and now >= next_submit:
                label = f"e{len(ids)}"
                payload = json.dumps({"label": label, "work_ms": TOOL_WORK_MS})
                ids.append(submit(client, {
                    "agent": "chaos",
                    "input": f"[tool:record_effect {payload}]",
                    "metadata": {"simulator": {"latency_ms": LATENCY_MS}},
                }))
                next_submit += SUBMIT_EVERY_S
            if len(chaos.kills) < KILLS and now >= next_kill:
                killed = chaos.outside_kill()
                next_kill = now + (chaos.rng.uniform(*OUTSIDE_KILL_GAP_S) if killed else 0.2)
            if now >= next_check:
                chaos.check_watches()
                next_check = now + 0.2
                if len(ids) == TASKS and not chaos.watches and chaos.unfinished(ids) == 0:
                    break
            time.sleep(0.05)  # the loop's pace; every wait above has its deadline
        wall_s = time.monotonic() - started
    finally:
        beat.terminate()
        for slot in [*chaos.slots, *chaos.standbys]:
            slot.worker.stop()
        beat.wait(20)

    figures = verify(chaos, db, r, simulator.url, ids)
    figures.update(seed=seed, wall_s=round(wall_s, 1), worker_restarts=chaos.restarts)
    LAST_RUN.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nchaos figures:", json.dumps(figures, indent=2))
    db.dispose()
    assert not figures["problems"], figures["problems"]
    assert not chaos.unexpected_deaths, chaos.unexpected_deaths[0]
    assert figures["kills"]["total"] >= KILLS, figures["kills"]
    assert figures["tasks"]["lost"] == 0, figures["tasks"]
    assert figures["tool"]["duplicate_effects"] == 0
    assert figures["provider"]["paid_twice_after_answer"] == 0, figures["provider"]
    assert figures["recovery_s"]["max"] < RESUME_LIMIT_S, figures["recovery_s"]
    # The journal was exercised, not only present: answers and tool results a
    # killed worker had in hand were recorded by another worker without a second
    # call. (Expected several times each with these failpoint rates.)
    assert figures["provider"]["replayed_from_journal"] >= 1, figures["provider"]
    assert figures["tool"]["replayed_from_journal"] >= 1, figures["tool"]
