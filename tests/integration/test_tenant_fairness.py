"""A per-tenant cap on running tasks: one tenant's burst waits its turn (queued,
not dropped) while another tenant's task goes ahead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app import create_app
from celeriac.api_keys import create_key
from celeriac.store import Run
from tests.conftest import settings_from, stack_env
from tests.support.services import (
    IN_CI,
    RedisServer,
    create_postgres_database,
    drop_postgres_database,
    start_worker,
)

FAIRNESS_DB = 2


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store of the test's own. On PostgreSQL, eight worker threads really do
    claim at once (SQLite serializes every writer), so the cap's lock is tested."""
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
    drop_postgres_database(name)


def test_a_tenants_burst_does_not_starve_another(
    redis_server: RedisServer, simulator: Any, tmp_path: Path, store_url: str
) -> None:
    redis_url = redis_server.url(FAIRNESS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, store_url, simulator.url)
    env["CELERIAC_TENANT_MAX_RUNNING"] = "2"
    app = create_app(settings_from(env), configure_logs=False)
    db = app.extensions["celeriac"].services.db
    busy, quiet = create_key(db, "busy"), create_key(db, "quiet")
    client = app.test_client()
    slow = {"simulator": {"latency_ms": 700}}

    def run(key: str, text: str) -> str:
        response = client.post("/agent/run", json={"input": text, "metadata": slow},
                               headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 202, response.get_json()
        task_id: str = response.get_json()["task_id"]
        return task_id

    burst = [run(busy, f"burst {i}") for i in range(8)]
    other = run(quiet, "me too")
    worker = start_worker(env, tmp_path, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=8)
    try:
        status = client.get(f"/agent/status/{other}",
                            headers={"Authorization": f"Bearer {quiet}"}).get_json()
        assert status["status"] in ("queued", "running", "completed")
        for task_id in [other, *burst]:
            key = quiet if task_id == other else busy
            doc = wait_terminal_with(client, task_id, key)
            assert doc["status"] == "completed", doc
        with db.reader() as s:
            runs = {r.id: r for r in s.query(Run)}
        spans = [(runs[t].started_at, runs[t].finished_at) for t in burst]
        most = max(sum(1 for a, b in spans if a <= moment < b) for moment, _ in spans)
        assert most <= 2, most  # never more than the cap running at once
        # The quiet tenant did not wait for the whole burst.
        last_burst_start = max(start for start, _ in spans)
        assert runs[other].started_at < last_burst_start
    finally:
        worker.stop()
        db.dispose()
        redis.Redis.from_url(redis_url).flushdb()


def wait_terminal_with(client: Any, task_id: str, key: str) -> dict[str, Any]:
    from tests.support.waiting import wait_for

    def done() -> dict[str, Any] | None:
        doc: dict[str, Any] = client.get(
            f"/agent/status/{task_id}", headers={"Authorization": f"Bearer {key}"}
        ).get_json()
        return doc if doc["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(done, timeout=120, interval=0.2, what=f"task {task_id}")
