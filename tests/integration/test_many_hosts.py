"""Workers need only the broker and store URLs: two workers with different node
names (as on two hosts) share one Redis and one PostgreSQL and split the work; and
RabbitMQ works as the broker, with native priorities within a queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from app import create_app
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import (
    IN_CI,
    RedisServer,
    create_postgres_database,
    drop_postgres_database,
    start_worker,
)

HOSTS_DB = 2
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    url, name = created
    yield url
    drop_postgres_database(name)


def test_two_workers_on_one_redis_and_postgres_share_the_work(
    redis_server: RedisServer, simulator: Any, postgres_url: str, tmp_path: Path
) -> None:
    redis_url = redis_server.url(HOSTS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, postgres_url, simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    celery = app.extensions["celeriac"].queue.celery
    host_a = start_worker(env, tmp_path, ping=celery, concurrency=2)
    host_b = start_worker(env, tmp_path, ping=celery, concurrency=2)
    try:
        client = app.test_client()
        slow = {"simulator": {"latency_ms": 300}}
        ids = [submit(client, {"input": f"What is {i} + 1?", "metadata": slow})
               for i in range(16)]
        docs = [wait_terminal(client, task_id, timeout=90) for task_id in ids]
        assert [d["status"] for d in docs] == ["completed"] * 16
        calls = {w.name: w.log().count('"llm_call"') for w in (host_a, host_b)}
        assert sum(calls.values()) == 32  # 2 LLM steps per task, each run exactly once
        assert all(n >= 4 for n in calls.values()), calls  # both hosts took a share
    finally:
        host_a.stop()
        host_b.stop()
        redis.Redis.from_url(redis_url).flushdb()


def _rabbit_or_skip() -> None:
    try:
        with Connection(RABBIT_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"RabbitMQ is not answering on 127.0.0.1:5672 (required in CI): {exc}")
        pytest.skip("RabbitMQ not available locally")


def test_rabbitmq_broker_with_native_priorities(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> None:
    _rabbit_or_skip()
    with Connection(RABBIT_URL) as conn:  # start from empty queues
        channel = conn.channel()
        for queue in ("high", "default", "low"):
            channel.queue_delete(queue)
    redis_url = redis_server.url(HOSTS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["BROKER_URL"] = RABBIT_URL
    app = create_app(settings_from(env), configure_logs=False)
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["broker"] == "ok"
    # All "normal" (3-6) share the default queue; RabbitMQ orders them by number.
    backlog = [submit(client, {"input": f"later {i}", "priority": 3}) for i in range(30)]
    urgent = submit(client, {"input": "sooner", "priority": 6})
    worker = start_worker(env, tmp_path, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=1)
    try:
        first = wait_terminal(client, urgent, timeout=60)
        assert first["status"] == "completed"
        db = app.extensions["celeriac"].services.db
        from celeriac.store import Run

        with db.reader() as s:
            started = {r.id: r.started_at for r in s.query(Run).filter(Run.id.in_(backlog))}
            urgent_start = s.get(Run, urgent).started_at  # type: ignore[union-attr]
        before = [i for i, t in started.items() if t is not None and t < urgent_start]
        assert len(before) <= 2, len(before)  # at most what the worker already held
        docs = [wait_terminal(client, task_id, timeout=120) for task_id in backlog]
        assert all(d["status"] == "completed" for d in docs)
    finally:
        worker.stop()
        redis.Redis.from_url(redis_url).flushdb()
