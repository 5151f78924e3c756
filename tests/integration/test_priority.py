"""Priority queues against a real worker: a high task submitted after a backlog of
500 low ones starts before the remaining lows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from app import create_app
from celeriac.store import Run
from tests.conftest import settings_from, stack_env
from tests.support.runs import wait_terminal
from tests.support.services import RedisServer, start_worker

BACKLOG = 500
PRIORITY_DB = 14


@pytest.fixture
def quiet_app(redis_server: RedisServer, simulator: Any, tmp_path: Path) -> Iterator[Flask]:
    redis_url = redis_server.url(PRIORITY_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'priority.db'}", simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    app.config["ENV_FOR_WORKER"] = env
    yield app
    redis.Redis.from_url(redis_url).flushdb()
    app.extensions["celeriac"].services.db.dispose()


def test_high_priority_overtakes_a_low_backlog(quiet_app: Flask, tmp_path: Path) -> None:
    client = quiet_app.test_client()
    lows = [
        client.post("/agent/run", json={"input": f"low {i}", "priority": "low"}).get_json()[
            "task_id"
        ]
        for i in range(BACKLOG)
    ]
    high = client.post("/agent/run", json={"input": "urgent", "priority": "high"}).get_json()[
        "task_id"
    ]
    # Only now does a worker start: the whole backlog is waiting ahead of the high task.
    celery = quiet_app.extensions["celeriac"].queue.celery
    worker = start_worker(
        quiet_app.config["ENV_FOR_WORKER"], tmp_path, concurrency=2, ping=celery
    )
    try:
        doc = wait_terminal(client, high, timeout=120)
        assert doc["status"] == "completed"
        db = quiet_app.extensions["celeriac"].services.db
        with db.reader() as s:
            high_run = s.get(Run, high)
            assert high_run is not None and high_run.started_at is not None
            started_before = list(
                s.scalars(
                    select(Run.id).where(
                        Run.id.in_(lows),
                        Run.started_at.is_not(None),
                        Run.started_at < high_run.started_at,
                    )
                )
            )
        # At most the messages already taken by the two worker threads may go first.
        assert len(started_before) <= 4, len(started_before)
    finally:
        worker.stop()
