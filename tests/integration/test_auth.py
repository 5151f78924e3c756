"""API keys and tenants: open until the first key; then a valid key on every
/agent route, tasks visible only to their tenant (404 otherwise), per-key rates."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from celeriac.auth import create_key, revoke_key

ROUTES = [
    ("get", "/agent/status/{id}"),
    ("get", "/agent/events/{id}"),
    ("post", "/agent/cancel/{id}"),
]


def _db(api: FlaskClient) -> Any:
    return api.application.extensions["celeriac"].services.db


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_open_until_the_first_key_then_closed_everywhere(api: FlaskClient) -> None:
    open_task = api.post("/agent/run", json={"input": "hi"})
    assert open_task.status_code == 202
    key = create_key(_db(api), "acme")
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
