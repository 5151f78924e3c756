"""Submit tasks through the API and wait for them to end."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.support.waiting import wait_for

TERMINAL = ("completed", "failed", "cancelled")


def submit(client: FlaskClient, body: dict[str, Any], **headers: str) -> str:
    response = client.post("/agent/run", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    task_id: str = response.get_json()["task_id"]
    return task_id


def status(client: FlaskClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/agent/status/{task_id}")
    assert response.status_code == 200, response.get_json()
    doc: dict[str, Any] = response.get_json()
    return doc


def wait_terminal(client: FlaskClient, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = status(client, task_id)
        return doc if doc["status"] in TERMINAL else None

    return wait_for(done, timeout=timeout, interval=0.1, what=f"task {task_id} to end")
