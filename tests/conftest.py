"""Shared fixtures: a real Redis, a real store, the simulated provider over HTTP,
and a real Celery worker process. Nothing here is a mock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from config.settings import CONFIG_DIR, Settings
from simulator import start_in_thread
from tests.support.services import (
    IN_CI,
    RedisServer,
    WorkerProcess,
    create_postgres_database,
    drop_postgres_database,
    find_or_start_redis,
    start_worker,
)

# Each kind of stack gets its own Redis database so their queues never mix.
REDIS_DB = {"sqlite": 11, "postgres": 12, "scratch": 13}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = find_or_start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    handle = start_in_thread()
    yield handle
    handle.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "celeriac.db"
        yield "sqlite", f"sqlite:///{path}"
        return
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    url, name = created
    yield "postgres", url
    drop_postgres_database(name)


@dataclass
class Stack:
    """Web app + store + Redis + simulated provider + one real worker process."""

    name: str
    settings: Settings
    env: dict[str, str]
    app: Flask
    client: FlaskClient
    worker: WorkerProcess
    redis: redis.Redis
    simulator: Any
    log_dir: Path

    def sim_log(self) -> list[dict[str, Any]]:
        import httpx

        return list(httpx.get(f"{self.simulator.url}/_sim/log", timeout=5).json())


def stack_env(redis_url: str, database_url: str, simulator_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CELERIAC_SIMULATE": "1",
        "CELERIAC_SIMULATOR_URL": simulator_url,
        "CELERIAC_CONFIG_DIR": str(CONFIG_DIR),
        "CELERIAC_LOG_LEVEL": "INFO",
        # A turn queued behind its thread's running turn must be woken by that turn's
        # end: in tests the safety-net re-check is too slow to pass for it.
        "CELERIAC_THREAD_RECHECK_S": "60",
    }


def settings_from(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def stack(
    backend: tuple[str, str],
    redis_server: RedisServer,
    simulator: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    name, database_url = backend
    redis_url = redis_server.url(REDIS_DB[name])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    env = stack_env(redis_url, database_url, simulator.url)
    settings = settings_from(env)
    app = create_app(settings, configure_logs=False)
    log_dir = tmp_path_factory.mktemp(f"logs-{name}")
    queue = app.extensions["celeriac"].queue
    worker = start_worker(env, log_dir, ping=queue.celery, concurrency=8)
    yield Stack(name, settings, env, app, app.test_client(), worker, client, simulator, log_dir)
    worker.stop()
    app.extensions["celeriac"].services.db.dispose()


@pytest.fixture
def api(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> Iterator[FlaskClient]:
    """The web app alone (no worker): for validation and API-shape tests."""
    redis_url = redis_server.url(REDIS_DB["scratch"])
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'api.db'}", simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    yield app.test_client()
    app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def live_api(api: FlaskClient) -> Iterator[str]:
    """The same app served over real HTTP by a threaded WSGI server."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, api.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
