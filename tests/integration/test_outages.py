"""A dependency down, hung or locked: requests answer 503 with Retry-After and a JSON
error, quickly, instead of a 500 or a hang; /readyz says which dependency failed;
and Redis coming back empty is noticed, logged once and counted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app
from celeriac.api_keys import create_key
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import (
    IN_CI,
    POSTGRES_ADMIN_URL,
    PROJECT_DIR,
    PrivateRedis,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    start_worker,
    worker_env,
)
from tests.support.waiting import wait_for

# How long a test holds a dependency down or locked; every request must have
# answered well before it lets go (the bound is seconds: Settings.store_*, redis_*).
HELD_S = 60


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not available")
    server = PrivateRedis(tmp_path, aof=False)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # in case a test left it paused
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store of this test's own: it gets locked and cut off."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    url, name = created
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    drop_postgres_database(name)


@contextmanager
def web_app(redis_url: str, database_url: str, simulator: Any) -> Iterator[Flask]:
    app = create_app(settings_from(stack_env(redis_url, database_url, simulator.url)),
                     configure_logs=False)
    try:
        yield app
    finally:
        app.extensions["celeriac"].services.db.dispose()


def authed(app: Flask) -> tuple[FlaskClient, dict[str, str]]:
    """A client and the header of a real API key: every /agent/* request then goes
    through the key's rate limiter, which asks Redis first."""
    key = create_key(app.extensions["celeriac"].services.db, "acme")
    return app.test_client(), {"Authorization": f"Bearer {key}"}


def agent_requests(client: FlaskClient, headers: dict[str, str],
                   task_id: str) -> dict[str, Callable[[], TestResponse]]:
    return {
        "run": lambda: client.post("/agent/run", json={"input": "What is 2 * 3?"},
                                   headers=headers),
        "status": lambda: client.get(f"/agent/status/{task_id}", headers=headers),
        "tasks": lambda: client.get("/agent/tasks", headers=headers),
    }


def answers_within(calls: dict[str, Callable[[], TestResponse]],
                   timeout: float) -> dict[str, TestResponse]:
    """Make the calls at once, in threads; fail if any has not answered in time."""
    pool = ThreadPoolExecutor(max_workers=len(calls))
    futures: dict[str, Future[TestResponse]] = {n: pool.submit(c) for n, c in calls.items()}
    _, pending = wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False)
    hung = [name for name, f in futures.items() if f in pending]
    assert not hung, f"no answer within {timeout}s from {hung}"
    return {name: f.result() for name, f in futures.items()}


def assert_unavailable(responses: dict[str, TestResponse], code: str) -> None:
    for name, response in responses.items():
        assert response.status_code == 503, (name, response.status_code, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == code, (name, error)
        assert error["message"], name
        assert int(response.headers["Retry-After"]) >= 1, name


def test_redis_down_answers_503(private_redis: PrivateRedis, simulator: Any,
                                tmp_path: Path) -> None:
    with web_app(private_redis.url, f"sqlite:///{tmp_path / 'store.db'}", simulator) as app:
        client, headers = authed(app)
        task_id = submit(client, {"input": "before the outage"}, **headers)
        private_redis.kill()
        responses = answers_within(agent_requests(client, headers, task_id), timeout=HELD_S)
        assert_unavailable(responses, "redis_unavailable")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.get_json()["checks"]
        assert checks["store"] == "ok"
        assert checks["redis"] != "ok" and checks["broker"] != "ok", checks


def test_a_hung_redis_answers_503_instead_of_hanging(private_redis: PrivateRedis,
                                                     simulator: Any, tmp_path: Path) -> None:
    with web_app(private_redis.url, f"sqlite:///{tmp_path / 'store.db'}", simulator) as app:
        client, headers = authed(app)
        task_id = submit(client, {"input": "before the outage"}, **headers)
        assert private_redis.process is not None
        private_redis.process.send_signal(signal.SIGSTOP)  # accepts, never answers
        try:
            calls = {**agent_requests(client, headers, task_id),
                     "readyz": lambda: client.get("/readyz")}
            responses = answers_within(calls, timeout=HELD_S)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        ready = responses.pop("readyz")
        assert ready.status_code == 503, ready.get_json()
        assert_unavailable(responses, "redis_unavailable")


def test_database_down_answers_503(redis_server: Any, simulator: Any) -> None:
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    url, name = created
    try:
        with web_app(redis_server.url(13), url, simulator) as app:
            client, headers = authed(app)
            task_id = submit(client, {"input": "before the outage"}, **headers)
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s", (name,))
            responses = answers_within(agent_requests(client, headers, task_id),
                                       timeout=HELD_S)
            assert_unavailable(responses, "store_unavailable")
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.get_json()["checks"]["store"] != "ok"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        drop_postgres_database(name)
        redis.Redis.from_url(redis_server.url(13)).flushdb()


@contextmanager
def runs_locked(database_url: str) -> Iterator[None]:
    """Another connection holds the strongest lock there is on ``runs`` (PostgreSQL:
    ACCESS EXCLUSIVE; SQLite: an exclusive transaction, the whole file) until the
    block ends."""
    if database_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        conn.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def test_a_lock_held_on_runs_answers_503_instead_of_hanging(
    database_url: str, redis_server: Any, simulator: Any
) -> None:
    try:
        with web_app(redis_server.url(13), database_url, simulator) as app:
            client, headers = authed(app)
            task_id = submit(client, {"input": "before the lock"}, **headers)
            with runs_locked(database_url):
                calls = agent_requests(client, headers, task_id)
                if database_url.startswith("sqlite"):
                    # WAL: readers never wait for a writer, so only writes can be held.
                    calls = {"run": calls["run"]}
                else:
                    calls["readyz"] = lambda: client.get("/readyz")
                responses = answers_within(calls, timeout=HELD_S)
            ready = responses.pop("readyz", None)
            if ready is not None:
                assert ready.status_code == 503
                assert ready.get_json()["checks"]["store"] != "ok"
            assert_unavailable(responses, "store_unavailable")
            # And once the lock is gone, the same app answers again.
            assert client.get(f"/agent/status/{task_id}", headers=headers).status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        redis.Redis.from_url(redis_server.url(13)).flushdb()


# -- Redis comes back empty ---------------------------------------------------------

def _log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _losses_on(url: str) -> float | None:
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.TransportError:
        return None
    for line in text.splitlines():
        if line.startswith("agent_redis_data_losses_total "):
            return float(line.split()[1])
    return None


def test_redis_flushed_while_running_is_logged_once_and_counted(
    private_redis: PrivateRedis, simulator: Any, tmp_path: Path
) -> None:
    env = stack_env(private_redis.url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["CELERIAC_STEP_LEASE_S"] = "3"  # heartbeats, and so epoch checks, every second
    with web_app(private_redis.url, env["DATABASE_URL"], simulator) as app:
        client = app.test_client()
        celery = app.extensions["celeriac"].queue.celery
        workers = [start_worker(env, tmp_path, ping=celery, concurrency=2) for _ in range(2)]
        port = free_port()
        exporter_log = tmp_path / "exporter.log"
        with exporter_log.open("wb") as out:
            exporter = subprocess.Popen(
                [sys.executable, "-m", "app.exporter", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=PROJECT_DIR, env=worker_env(env), stdout=out, stderr=subprocess.STDOUT)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        try:
            doc = wait_terminal(client, submit(client, {"input": "What is 6 * 7?"}), timeout=120)
            assert doc["status"] == "completed"
            assert wait_for(lambda: _losses_on(metrics_url) is not None, timeout=60,
                            what="the exporter to serve")
            assert _losses_on(metrics_url) == 0.0

            redis.Redis.from_url(private_redis.url).flushall()

            wait_for(lambda: _losses_on(metrics_url) == 1.0, timeout=60,
                     what="the loss to be counted")

            def noticed(worker: Any) -> bool:
                return any(e.get("event") in ("redis_data_lost", "redis_epoch_changed")
                           for e in _log_events(worker.log_path))

            wait_for(lambda: all(noticed(w) for w in workers), timeout=60,
                     what="every worker to notice the new epoch")
            lost = [e for w in workers for e in _log_events(w.log_path)
                    if e.get("event") == "redis_data_lost"]
            assert len(lost) == 1, lost
            assert lost[0]["level"] == "error"
            assert _losses_on(metrics_url) == 1.0
            # Work goes on after the loss.
            after = wait_terminal(client, submit(client, {"input": "after the loss"}),
                                  timeout=120)
            assert after["status"] == "completed"
        finally:
            exporter.terminate()
            exporter.wait(20)
            for worker in workers:
                worker.stop()


def test_a_fresh_system_is_not_a_loss(private_redis: PrivateRedis, simulator: Any,
                                      tmp_path: Path) -> None:
    """The control: an empty Redis beside an empty store is a first start."""
    env = stack_env(private_redis.url, f"sqlite:///{tmp_path / 'store.db'}", simulator.url)
    env["CELERIAC_STEP_LEASE_S"] = "3"
    with web_app(private_redis.url, env["DATABASE_URL"], simulator) as app:
        worker = start_worker(env, tmp_path, ping=app.extensions["celeriac"].queue.celery,
                              concurrency=2)
        try:
            epoch = redis.Redis.from_url(private_redis.url, decode_responses=True)
            wait_for(lambda: epoch.get("celeriac:epoch"), timeout=60,
                     what="the worker to set the epoch")
        finally:
            worker.stop()
        assert not [e for e in _log_events(worker.log_path)
                    if e.get("event") == "redis_data_lost"]

