"""Submit tasks through the API and wait for them to end."""

from __future__ import annotations

from collections.abc import Callable
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


def wait_terminal(
    client: FlaskClient,
    task_id: str,
    timeout: float = 60,
    *,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wait for the task to end. ``check`` runs before each look and may fail the
    wait at once (a worker that died, say) instead of at the timeout."""

    def done() -> dict[str, Any] | None:
        if check is not None:
            check()
        doc = status(client, task_id)
        return doc if doc["status"] in TERMINAL else None

    return wait_for(done, timeout=timeout, interval=0.1, what=f"task {task_id} to end")
