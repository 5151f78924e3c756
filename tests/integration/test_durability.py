"""Workers die mid-step; nothing accepted is lost. Leases with a heartbeat and the
reaper (a real beat process) hand interrupted steps to a live worker within
seconds, not after Celery's one-hour visibility timeout; a step that keeps dying is
dead-lettered with a clear error instead of looping."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from celeriac.clock import utcnow
from celeriac.store import Step
from config.celery import LLM_STEP
from tests.conftest import settings_from, stack_env
from tests.support.runs import status, submit, wait_terminal
from tests.support.services import RedisServer, start_beat, start_worker
from tests.support.waiting import wait_for

DURABILITY_DB = 7


@pytest.fixture
def crashy(redis_server: RedisServer, simulator: Any, tmp_path: Path
           ) -> Iterator[tuple[Flask, dict[str, str], Path]]:
    redis_url = redis_server.url(DURABILITY_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["CELERIAC_STEP_LEASE_S"] = "6"
    app = create_app(settings_from(env), configure_logs=False)
    beat = start_beat(env, tmp_path)
    try:
        yield app, env, tmp_path
    finally:
        beat.terminate()
        beat.wait(20)
        redis.Redis.from_url(redis_url).flushdb()
        app.extensions["celeriac"].services.db.dispose()


def _steps(app: Flask, run_ids: list[str]) -> list[Step]:
    db = app.extensions["celeriac"].services.db
    with db.reader() as s:
        return list(s.query(Step).filter(Step.run_id.in_(run_ids)))


def test_killed_worker_loses_nothing_and_steps_resume_quickly(crashy: Any) -> None:
    app, env, tmp = crashy
    celery = app.extensions["celeriac"].queue.celery
    client = app.test_client()
    first = start_worker(env, tmp, ping=celery, concurrency=8)
    slow = {"simulator": {"latency_ms": 2500}}
    ids = [submit(client, {"input": f"What is {i} * 7?", "metadata": slow}) for i in range(12)]
    wait_for(lambda: sum(s.status == "running" for s in _steps(app, ids)) >= 4, timeout=30,
             what="steps in flight")
    interrupted = [s.id for s in _steps(app, ids) if s.status == "running"]
    os.kill(first.process.pid, signal.SIGKILL)  # no warm shutdown, no ack
    first.process.wait(10)
    second = start_worker(env, tmp, ping=celery, concurrency=8)
    # From when a worker can take work again: its boot is not recovery time.
    back_at = time.monotonic()
    try:
        docs = [wait_terminal(client, task_id, timeout=120) for task_id in ids]
        recovered_in = time.monotonic() - back_at
        assert [d["status"] for d in docs] == ["completed"] * len(ids)
        assert all(str(i * 7) in d["result"] for i, d in enumerate(docs))
        steps = {s.id: s for s in _steps(app, ids)}
        assert all(steps[sid].recoveries >= 1 for sid in interrupted)
        # Each interrupted step was finished by the second worker well within 60 s.
        assert recovered_in < 60, recovered_in
        # Nothing finished was executed again.
        assert all(s.attempts == 1 for s in steps.values() if s.id not in interrupted)
    finally:
        second.stop()


def test_a_step_that_keeps_dying_is_dead_lettered(crashy: Any) -> None:
    app, env, tmp = crashy
    celery = app.extensions["celeriac"].queue.celery
    client = app.test_client()
    task_id = submit(client, {"input": "Hello"})
    step_id = f"{task_id}-0-llm"
    db = app.extensions["celeriac"].services.db
    # As if five workers had died holding it: running, lease long gone.
    with db.session() as s:
        step = s.get(Step, step_id)
        assert step is not None
        step.status, step.recoveries = "running", 5
        step.lease_until = utcnow() - timedelta(minutes=1)
    worker = start_worker(env, tmp, ping=celery, concurrency=2)
    try:
        celery.send_task(LLM_STEP, args=[step_id], queue="default")
        doc = wait_terminal(client, task_id, timeout=60)
        assert doc["status"] == "failed"
        assert doc["error"]["code"] == "dead_letter"
        assert "interrupted 6 times" in doc["error"]["message"]
        assert status(client, task_id)["steps"][0]["status"] == "failed"
    finally:
        worker.stop()


def test_a_task_past_its_wall_clock_limit_is_ended(crashy: Any) -> None:
    """No task stays running forever: its next step refuses to start, and the reaper
    ends it even when no step comes."""
    app, env, tmp = crashy
    client = app.test_client()
    db = app.extensions["celeriac"].services.db
    from celeriac.store import Run

    stuck = submit(client, {"input": "Hello"})  # no worker: it waits, queued
    with db.session() as s:
        run = s.get(Run, stuck)
        assert run is not None
        run.status = "running"  # as if its worker vanished with every trace of it
        run.deadline_at = utcnow() - timedelta(minutes=5)
        s.get(Step, f"{stuck}-0-llm").status = "running"  # type: ignore[union-attr]
    late = submit(client, {"input": "Hello"})
    with db.session() as s:
        late_run = s.get(Run, late)
        assert late_run is not None
        # Started, and past its limit before its next step: that step refuses to run.
        # (A queued run's limit has not started yet: it counts from admission.)
        late_run.status, late_run.started_at = "running", late_run.created_at
        late_run.deadline_at = utcnow() - timedelta(seconds=1)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=2)
    try:
        doc = wait_terminal(client, late, timeout=60)
        assert doc["status"] == "failed" and doc["error"]["code"] == "deadline_exceeded"
        ended = wait_terminal(client, stuck, timeout=60)  # by the reaper (beat)
        assert ended["status"] == "failed" and ended["error"]["code"] == "deadline_exceeded"
        assert "wall-clock limit" in ended["error"]["message"]
    finally:
        worker.stop()


def test_a_step_whose_retry_died_with_its_worker_is_sent_again(crashy: Any) -> None:
    """A retry's countdown lives in one worker's memory (unacknowledged until Celery's
    one-hour visibility timeout). The store records when the retried step is due, and
    the reaper sends a pending step well past that again, instead of waiting an hour."""
    app, env, tmp = crashy
    celery = app.extensions["celeriac"].queue.celery
    client = app.test_client()
    services = app.extensions["celeriac"].services
    task_id = submit(client, {"input": "What is 6 * 7?"})
    step_id = f"{task_id}-0-llm"
    # A retry records when the step is due: its countdown from now.
    services.loop.requeued(step_id, 20)
    with services.db.reader() as s:
        step = s.get(Step, step_id)
        assert step is not None and step.sent_at is not None
        due_in = (step.sent_at.replace(tzinfo=utcnow().tzinfo) - utcnow()).total_seconds()
    assert 15 < due_in <= 20
    # Now as if the worker holding that retry had died: the message is gone, and the
    # step was due 40 s ago after one delivery.
    celery.control.purge()
    with services.db.session() as s:
        step = s.get(Step, step_id)
        assert step is not None
        step.deliveries, step.sent_at = 1, utcnow() - timedelta(seconds=40)
    worker = start_worker(env, tmp, ping=celery, concurrency=2)
    try:
        doc = wait_terminal(client, task_id, timeout=60)
        assert doc["status"] == "completed" and "42" in doc["result"]
    finally:
        worker.stop()


def test_a_killed_workers_held_messages_are_sent_again_without_waiting(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> None:
    """A step whose message a worker holds without running it (here a deferral's
    countdown, kept in the worker's memory) has no lease to run out. When that worker
    is SIGKILLed, the reaper learns from the worker's holdings note (its liveness key
    expired) that the message died with it and sends the step again, rather than
    waiting for it to look stale, or for the broker's one-hour visibility timeout."""
    redis_url = redis_server.url(DURABILITY_DB)
    client_redis = redis.Redis.from_url(redis_url, decode_responses=True)
    client_redis.flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["CELERIAC_STEP_LEASE_S"] = "4"
    env["CELERIAC_REAP_INTERVAL_S"] = "1"
    env["CELERIAC_TENANT_MAX_RUNNING"] = "1"  # the second task waits for the first
    app = create_app(settings_from(env), configure_logs=False)
    celery = app.extensions["celeriac"].queue.celery
    client = app.test_client()
    holder = start_worker(env, tmp_path, ping=celery, concurrency=4)
    slow = submit(client, {"input": "Hello", "metadata": {"simulator": {"latency_ms": 4000}}})
    wait_for(lambda: status(client, slow)["status"] == "running", timeout=30,
             what="the slow task to start")
    waiting = submit(client, {"input": "Hello"})
    waiting_step = f"{waiting}-0-llm"
    db = app.extensions["celeriac"].services.db

    def deferred_and_held() -> bool:
        with db.reader() as s:
            step = s.get(Step, waiting_step)
            deferred = step is not None and step.status == "pending" and step.deliveries >= 1
        held = client_redis.hget(f"celeriac:worker:{holder.name}:held", waiting_step)
        return deferred and held is not None and int(held) > 0

    # Deferred (the tenant is at its cap) with a countdown: its retry message sits in
    # the holder's memory, noted in the holder's holdings.
    wait_for(deferred_and_held, timeout=30, what="the second task deferred and held")
    os.kill(holder.process.pid, signal.SIGKILL)
    holder.process.wait(10)
    beat = start_beat(env, tmp_path)
    rescuer = start_worker(env, tmp_path, ping=celery, concurrency=4)
    try:
        assert wait_terminal(client, slow, timeout=90)["status"] == "completed"
        assert wait_terminal(client, waiting, timeout=90)["status"] == "completed"
        # It came back through the holdings note, not the stale-message pass.
        orphaned = [line for line in rescuer.log().splitlines() if "step_orphaned" in line]
        assert any(waiting_step in line for line in orphaned), rescuer.log()[-3000:]
        # The dead worker's note was taken once and is gone.
        assert not client_redis.exists(f"celeriac:worker:{holder.name}:held")
    finally:
        rescuer.stop()
        beat.terminate()
        beat.wait(20)
        client_redis.flushdb()
        app.extensions["celeriac"].services.db.dispose()
