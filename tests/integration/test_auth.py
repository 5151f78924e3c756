"""API keys and tenants: in dev mode open until the first key, outside it closed from
the start; then a valid key on every /agent route, tasks (and dashboard figures)
visible only to their tenant (404 otherwise), per-key rates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from celeriac.api_keys import create_key, revoke_key
from tests.conftest import REDIS_DB, settings_from, stack_env
from tests.support.runs import TERMINAL, submit
from tests.support.services import RedisServer, start_worker
from tests.support.waiting import wait_for

# Shared with test_tracing: each module flushes it first.
AUTH_DB = 1

ROUTES = [
    ("get", "/agent/status/{id}"),
    ("get", "/agent/events/{id}"),
    ("post", "/agent/cancel/{id}"),
]


def _db(api: FlaskClient) -> Any:
    return api.application.extensions["celeriac"].services.db


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _closed_env(redis_url: str, tmp_path: Path, simulator: Any) -> dict[str, str]:
    env = stack_env(redis_url, f"sqlite:///{tmp_path / 'closed.db'}", simulator.url)
    return {**env, "CELERIAC_DEV_MODE": "0"}


@pytest.fixture
def closed_api(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> Iterator[FlaskClient]:
    """The web app alone, outside dev mode (as docker compose runs it), no key yet."""
    redis_url = redis_server.url(REDIS_DB["scratch"])
    app = create_app(settings_from(_closed_env(redis_url, tmp_path, simulator)),
                     configure_logs=False)
    assert app.extensions["celeriac"].services.settings.dev_mode is False
    yield app.test_client()
    app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def _declared_security(api: FlaskClient) -> set[str]:
    """How /openapi.json says each /agent/* operation authenticates: "bearer"
    (required) or "optional" (bearer, or nothing)."""
    doc = api.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": ANY}
    declared = set()
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if not path.startswith("/agent/"):
                assert "security" not in operation, path
                continue
            security = operation["security"]
            declared.add("optional" if {} in security else "bearer")
            assert {"apiKey": []} in security, path
    return declared


def test_open_until_the_first_key_then_closed_everywhere(api: FlaskClient) -> None:
    assert api.application.extensions["celeriac"].services.settings.dev_mode is True
    open_task = api.post("/agent/run", json={"input": "hi"})
    assert open_task.status_code == 202
    assert api.get("/agent/dashboard/data").status_code == 200
    assert _declared_security(api) == {"optional"}  # as it is, before the first key
    key = create_key(_db(api), "acme")
    assert _declared_security(api) == {"bearer"}
    assert key.startswith("clk_")
    # Closed at once: the very next request, not after some cache expires (a window
    # in which the first key's creation left the API open).
    assert api.get("/agent/tasks").status_code == 401
    for method, path in [("get", "/agent/tasks"), ("get", "/agent/agents"),
                         ("get", "/agent/usage"), ("get", "/agent/providers"),
                         ("get", "/agent/dashboard/data"), ("post", "/agent/run")]:
        response = getattr(api, method)(path, json={"input": "x"} if method == "post" else None)
        assert response.status_code == 401, path
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    bad = api.get("/agent/tasks", headers=_bearer("clk_not-a-key"))
    assert bad.status_code == 401
    assert api.get("/agent/tasks", headers=_bearer(key)).status_code == 200
    assert api.get("/healthz").status_code == 200  # health stays open for probes


def test_tasks_are_visible_only_to_their_tenant(api: FlaskClient) -> None:
    key_a = create_key(_db(api), "tenant-a")
    key_b = create_key(_db(api), "tenant-b")
    task = api.post("/agent/run", json={"input": "secret plans"}, headers=_bearer(key_a))
    assert task.status_code == 202
    task_id = task.get_json()["task_id"]
    assert api.get(f"/agent/status/{task_id}", headers=_bearer(key_a)).status_code == 200
    for method, path in ROUTES:
        response = getattr(api, method)(path.format(id=task_id), headers=_bearer(key_b))
        assert response.status_code == 404, path
        unknown = getattr(api, method)(path.format(id="nope"), headers=_bearer(key_b))
        assert response.get_json() == {
            "error": {**unknown.get_json()["error"],
                      "message": response.get_json()["error"]["message"]}
        }
    listed_b = api.get("/agent/tasks", headers=_bearer(key_b)).get_json()
    assert listed_b["total"] == 0
    listed_a = api.get("/agent/tasks", headers=_bearer(key_a)).get_json()
    assert [i["task_id"] for i in listed_a["items"]] == [task_id]
    # Idempotency keys are per tenant too.
    same = {"Idempotency-Key": "k1"}
    first = api.post("/agent/run", json={"input": "x"}, headers={**_bearer(key_a), **same})
    other = api.post("/agent/run", json={"input": "x"}, headers={**_bearer(key_b), **same})
    assert first.get_json()["task_id"] != other.get_json()["task_id"]


def test_revoked_keys_are_refused(api: FlaskClient) -> None:
    key = create_key(_db(api), "acme")
    assert api.get("/agent/tasks", headers=_bearer(key)).status_code == 200
    assert revoke_key(_db(api), key)
    assert not revoke_key(_db(api), key)
    assert api.get("/agent/tasks", headers=_bearer(key)).status_code == 401


def test_per_key_rate_limit_answers_429_with_retry_after(api: FlaskClient) -> None:
    settings = api.application.extensions["celeriac"].services.settings
    settings.api_rate_per_minute, settings.api_burst = 60, 3
    key = create_key(_db(api), "chatty")
    codes = [api.get("/agent/agents", headers=_bearer(key)).status_code for _ in range(8)]
    assert codes[:4] == [200] * 4
    assert 429 in codes
    limited = api.get("/agent/agents", headers=_bearer(key))
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    other = create_key(_db(api), "quiet")
    assert api.get("/agent/agents", headers=_bearer(other)).status_code == 200


def test_keys_command_line(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.support.services import PROJECT_DIR

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"}

    def celeriac(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=PROJECT_DIR,
                              env=env, capture_output=True, text=True, timeout=60)

    made = celeriac("keys", "create", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("clk_") and len(key) > 40
    assert celeriac("keys", "revoke", key).returncode == 0
    again = celeriac("keys", "revoke", key)
    assert again.returncode == 1 and "no such active key" in again.stderr
    bad = celeriac("keys", "create", "no spaces please")
    assert bad.returncode == 2 and "tenant" in bad.stderr
    for args in (["keys", "--help"], ["keys", "create", "--help"], ["keys", "revoke", "--help"]):
        assert celeriac(*args).returncode == 0


def test_outside_dev_mode_closed_before_the_first_key(closed_api: FlaskClient) -> None:
    for method, path in [("post", "/agent/run"), ("get", "/agent/dashboard/data"),
                         ("get", "/agent/tasks"), ("get", "/agent/events/nope")]:
        response = getattr(closed_api, method)(
            path, json={"input": "x"} if method == "post" else None)
        assert response.status_code == 401, path
        error = response.get_json()["error"]
        assert error["code"] == "unauthorized"
        assert "celeriac keys create TENANT" in error["message"], error
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert _declared_security(closed_api) == {"bearer"}
    # Probes, the schema and the pages themselves carry no tenant's data: still open.
    for path in ("/healthz", "/readyz", "/openapi.json", "/", "/dashboard",
                 "/static/dashboard.js", "/static/apikey.js"):
        assert closed_api.get(path).status_code == 200, path

    key = create_key(_db(closed_api), "acme")
    run = closed_api.post("/agent/run", json={"input": "hi"}, headers=_bearer(key))
    assert run.status_code == 202
    data = closed_api.get("/agent/dashboard/data", headers=_bearer(key))
    assert data.status_code == 200
    assert data.get_json()["totals"]["queued"] == 1
    refused = closed_api.get("/agent/dashboard/data", headers=_bearer("clk_not-a-key"))
    assert refused.status_code == 401
    assert "keys create" not in refused.get_json()["error"]["message"]  # one exists now


@pytest.fixture
def closed_stack(
    redis_server: RedisServer, simulator: Any, tmp_path: Path
) -> Iterator[FlaskClient]:
    """Outside dev mode, with a real worker: steps really run."""
    redis_url = redis_server.url(AUTH_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = _closed_env(redis_url, tmp_path, simulator)
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp_path, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=4)
    yield app.test_client()
    worker.stop()
    app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def _llm_attempts(doc: dict[str, Any]) -> int:
    return sum(s["attempts"] for s in doc["steps"] if s["kind"] == "llm")


def test_dashboard_counts_only_the_callers_tenant(closed_stack: FlaskClient) -> None:
    client = closed_stack
    key_a, key_b = create_key(_db(client), "tenant-a"), create_key(_db(client), "tenant-b")
    a, b = _bearer(key_a)["Authorization"], _bearer(key_b)["Authorization"]
    plain = submit(client, {"input": "Hi"}, Authorization=a)
    calc = submit(client, {"input": "What is 17 * 23?"}, Authorization=b)
    failing = submit(client, {"input": "Hi", "metadata": {"simulator": {"fault": "400"}}},
                     Authorization=b)

    def ended(task_id: str, key: str) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            response = client.get(f"/agent/status/{task_id}", headers=_bearer(key))
            assert response.status_code == 200, response.get_json()
            doc: dict[str, Any] = response.get_json()
            return doc if doc["status"] in TERMINAL else None

        return wait_for(terminal, timeout=90, interval=0.2, what=f"task {task_id} to end")

    a_doc = ended(plain, key_a)
    b_docs = [ended(calc, key_b), ended(failing, key_b)]
    assert a_doc["status"] == "completed"
    assert [d["status"] for d in b_docs] == ["completed", "failed"]
    assert any(s["kind"] == "tool" for s in b_docs[0]["steps"])

    def dashboard(key: str) -> dict[str, Any]:
        response = client.get("/agent/dashboard/data", headers=_bearer(key))
        assert response.status_code == 200
        data: dict[str, Any] = response.get_json()
        return data

    mine, theirs = dashboard(key_a), dashboard(key_b)
    assert (mine["totals"]["completed"], mine["totals"]["failed"]) == (1, 0)
    assert (theirs["totals"]["completed"], theirs["totals"]["failed"]) == (1, 1)
    # B's calculator call and B's failed provider call are B's alone.
    assert mine["tool_usage"] == []
    assert [(t["tool"], t["calls"]) for t in theirs["tool_usage"]] == [("calculator", 1)]
    assert sum(p["calls_24h"] for p in mine["providers"]) == _llm_attempts(a_doc) >= 1
    assert sum(p["errors_24h"] for p in mine["providers"]) == 0
    assert sum(p["calls_24h"] for p in theirs["providers"]) == sum(map(_llm_attempts, b_docs))
    assert sum(p["errors_24h"] for p in theirs["providers"]) >= 1
    assert mine["totals"]["cost_today_usd"] == pytest.approx(a_doc["usage"]["cost_usd"])
