"""The autoscaler process (``python -m app.autoscaler``) against a real Redis, real
worker processes and the simulated provider: a backlog adds workers and drains, an
idle queue shrinks the pool to its minimum while calls are still in flight without
losing any, a paused provider vetoes growth, and SIGTERM stops it all gracefully.
The probe's readings are checked on their own first."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app import create_app
from app.autoscaler import Probe, workers_gauge_key
from celeriac import redis_keys as keys
from celeriac.store import Run, Step
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit
from tests.support.services import PROJECT_DIR, RedisServer, worker_env
from tests.support.waiting import wait_for

AUTOSCALER_DB = 8
DECISIONS = keys.metric_counter("agent_autoscaler_decisions_total")
# Small thresholds so the test is quick. "Idle" is an empty queue (fewer than 1
# waiting), and the CPU rule is off: this 2-core machine, busy running the test and
# booting workers, is often above any CPU threshold.
POLICY = ["--min", "1", "--max", "3", "--interval", "0.5", "--add-above", "20",
          "--remove-below", "1", "--add-after", "2", "--remove-after", "2",
          "--cooldown", "1", "--cpu-above", "100"]
CONCURRENCY = 2


@dataclass
class Scaler:
    process: subprocess.Popen[bytes]
    log_path: Path
    redis: redis.Redis
    app: Flask
    client: FlaskClient

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def live_workers(self) -> int:
        """Worker processes the autoscaler started that are still running."""
        if self.process.poll() is not None:
            raise AssertionError(f"autoscaler exited early:\n{self.log()[-3000:]}")
        children = psutil.Process(self.process.pid).children()
        return sum(1 for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE)

    def gauge(self) -> int | None:
        value = self.redis.get(workers_gauge_key(_hostname()))
        return int(value) if value is not None else None

    def decisions(self, action: str, kind: str) -> float:
        labels = json.dumps({"action": action, "reason_kind": kind}, sort_keys=True)
        return float(self.redis.hget(DECISIONS, labels) or 0)

    def runs(self, ids: list[str], status: str | None = None) -> int:
        db = self.app.extensions["celeriac"].services.db
        query = select(func.count()).select_from(Run).where(Run.id.in_(ids))
        if status is not None:
            query = query.where(Run.status == status)
        with db.reader() as s:
            return int(s.scalar(query) or 0)

    def statuses(self, ids: list[str]) -> dict[str, int]:
        db = self.app.extensions["celeriac"].services.db
        with db.reader() as s:
            rows = s.execute(select(Run.status, func.count()).where(Run.id.in_(ids))
                             .group_by(Run.status))
            return {status: int(n) for status, n in rows}


def _hostname() -> str:
    import socket

    return socket.gethostname()


@pytest.fixture
def scaler(redis_server: RedisServer, simulator: Any, tmp_path: Path) -> Iterator[Scaler]:
    redis_url = redis_server.url(AUTOSCALER_DB)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'autoscaler.db'}", simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    log_path = tmp_path / "autoscaler.log"
    command = [sys.executable, "-m", "app.autoscaler", *POLICY,
               "--concurrency", str(CONCURRENCY), "--worker-option=--without-mingle",
               "--worker-option=--without-gossip"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=worker_env(env), stdout=log,
                                   stderr=subprocess.STDOUT)
    handle = Scaler(process, log_path, client, app, app.test_client())
    try:
        yield handle
    finally:
        if process.poll() is None:
            children = psutil.Process(process.pid).children()
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                for child in children:
                    child.kill()
                process.kill()
                process.wait(5)
        app.extensions["celeriac"].services.db.dispose()
        client.flushdb()


def _ready(scaler: Scaler, workers: int) -> None:
    celery = scaler.app.extensions["celeriac"].queue.celery
    wait_for(lambda: scaler.live_workers() == workers and scaler.gauge() == workers,
             timeout=60, interval=0.1, what=f"{workers} autoscaled workers")
    wait_for(lambda: len(celery.control.ping(timeout=0.5)) == workers, timeout=60,
             interval=0.1, what="the workers to answer ping")


def test_the_probe_reads_depth_pauses_and_rising_waits(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url(AUTOSCALER_DB), decode_responses=True)
    client.flushdb()
    try:
        probe = Probe(client, client, rate_limit_waits_per_s=1.0)
        client.rpush("high", "a", "b")
        client.rpush("default", "c")
        client.rpush("low\x06\x163", "d")  # kombu's list for an emulated priority
        client.rpush("unrelated", "e")
        assert probe.queue_depth() == 4

        waits = keys.metric_counter("agent_rate_limit_waits_total")
        labels = json.dumps({"kind": "in_place", "model": "m"}, sort_keys=True)
        client.hincrbyfloat(waits, labels, 10)
        assert probe.rate_limited(0.0) is False  # a first sample has no rate yet
        client.hincrbyfloat(waits, labels, 5)
        assert probe.rate_limited(2.0) is True  # 2.5 waits/s
        client.hincrbyfloat(waits, labels, 1)
        assert probe.rate_limited(4.0) is False  # 0.5 waits/s
        client.set(keys.provider_pause("m"), "1", px=10_000)
        assert probe.rate_limited(6.0) is True  # paused, whatever the waits
        client.delete(keys.provider_pause("m"))
        assert probe.rate_limited(8.0) is False
        client.hset(keys.provider_slowdown("m"), mapping={"f": "0.9", "at": "1"})
        assert probe.rate_limited(10.0) is True  # slowed down by provider feedback
    finally:
        client.flushdb()


def test_a_backlog_scales_up_then_idle_scales_down_losing_nothing(scaler: Scaler) -> None:
    _ready(scaler, 1)
    celery = scaler.app.extensions["celeriac"].queue.celery
    depth = Probe(scaler.redis, scaler.redis, rate_limit_waits_per_s=1.0).queue_depth
    # A backlog of short tasks, kept deep until all three workers answer ping, however
    # long they take to boot. Only then one slow task per worker slot at max size, behind
    # them (low priority): once the queue is empty, every slot of the three workers holds
    # one slow task, and the scale-down that follows hits workers with calls in flight.
    fast: list[str] = []

    def add_fast(n: int) -> None:
        for _ in range(n):
            fast.append(submit(scaler.client, {"input": f"Hello {len(fast)}", "metadata": {
                "simulator": {"latency_ms": 300}}}))

    def scaled_up_with_a_backlog() -> bool:
        if depth() < 60:
            add_fast(30)
        return (scaler.gauge() == 3 and len(celery.control.ping(timeout=1.0)) == 3
                and depth() >= 30)

    add_fast(80)
    wait_for(scaled_up_with_a_backlog, timeout=120, interval=0.1,
             what="scale-up to 3 workers answering ping, with a backlog left")
    slow = [submit(scaler.client, {"input": f"Slow {i}", "priority": "low", "metadata": {
        "simulator": {"latency_ms": 4000}}}) for i in range(3 * CONCURRENCY)]
    assert scaler.decisions("add", "queue_depth") >= 2

    # The first scale-down: at that moment all six slow calls are running, so each of
    # the three workers (two slots each) holds two of them.
    running_at_first_remove = wait_for(
        lambda: scaler.decisions("remove", "idle") >= 1 and scaler.statuses(slow),
        timeout=90, interval=0.05, what="the first scale-down")
    assert running_at_first_remove.get("running") == len(slow), running_at_first_remove

    # Back to the minimum, and every task completed: none lost, none left running.
    wait_for(lambda: scaler.live_workers() == 1 and scaler.gauge() == 1, timeout=30,
             interval=0.1, what="scale-down to the minimum")
    wait_for(lambda: scaler.runs(fast + slow, "completed") == len(fast + slow), timeout=30,
             interval=0.2, what=f"every task to complete: {scaler.statuses(fast + slow)}")
    assert scaler.decisions("remove", "idle") == 2
    # Finished in place by the warm shutdown, not handed back and run again.
    db = scaler.app.extensions["celeriac"].services.db
    with db.reader() as s:
        steps = list(s.scalars(select(Step).where(Step.run_id.in_(slow))))
    assert steps and all(step.deliveries == 1 and step.attempts == 1 for step in steps)
    drained = scaler.events("worker_draining")
    assert [e["worker"].split("@")[0] for e in drained] == ["autoscaled-3", "autoscaled-2"]
    assert all(e["returncode"] == 0 for e in scaler.events("worker_stopped"))
    assert not scaler.events("worker_exited")

    # SIGTERM: the autoscaler stops its last worker warmly and exits cleanly.
    children = psutil.Process(scaler.process.pid).children()
    scaler.process.send_signal(signal.SIGTERM)
    assert scaler.process.wait(30) == 0, scaler.log()[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert scaler.gauge() is None
    decisions = scaler.events("autoscale_decision")
    assert decisions and all(e["level"] == "info" for e in decisions)


def test_a_paused_provider_vetoes_growth_until_it_lifts(scaler: Scaler) -> None:
    _ready(scaler, 1)
    # A 429 with retry-after paused a model for every worker: more workers would
    # only wait too. (The key's value, when the pause ends, only matters to workers:
    # "1" is long past, so the calls themselves are not held up here.)
    scaler.redis.set(keys.provider_pause("claude-sonnet-4-20250514"), "1", px=60_000)
    ids = [submit(scaler.client, {"input": f"Hi {i}", "metadata": {
        "simulator": {"latency_ms": 300}}}) for i in range(60)]
    wait_for(lambda: scaler.decisions("hold", "rate_limited") >= 4, timeout=30,
             interval=0.1, what="holds for the rate limit")
    assert scaler.decisions("add", "queue_depth") == 0
    assert scaler.live_workers() == 1
    scaler.redis.delete(keys.provider_pause("claude-sonnet-4-20250514"))
    wait_for(lambda: scaler.decisions("add", "queue_depth") >= 1, timeout=30, interval=0.1,
             what="growth once the pause lifts")
    assert scaler.live_workers() >= 2
    assert scaler.runs(ids) == len(ids)  # (the backlog itself is the first test's subject)
