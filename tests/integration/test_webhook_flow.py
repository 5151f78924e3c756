"""A finished task's webhook, end to end: a real worker delivers one signed POST per
event to a local receiver; refused URLs are refused at submission."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from standardwebhooks import Webhook

from app import create_app
from celeriac.webhooks.store import WebhookDelivery
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for

WEBHOOK_DB = 4
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = 500 if receiver.fail_first > 0 else 204
                receiver.fail_first -= 1
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture(scope="module")
def hooked(redis_server: RedisServer, simulator: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Flask, WorkerProcess, Receiver]]:
    tmp = tmp_path_factory.mktemp("webhooks")
    redis_url = redis_server.url(WEBHOOK_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env.update(CELERIAC_WEBHOOK_SECRET=SECRET, CELERIAC_WEBHOOK_ALLOW_LOOPBACK="1")
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery)
    receiver = Receiver()
    yield app, worker, receiver
    receiver.server.shutdown()
    worker.stop()
    redis.Redis.from_url(redis_url).flushdb()


def _deliveries(app: Flask, run_id: str) -> list[WebhookDelivery]:
    with app.extensions["celeriac"].services.db.reader() as s:
        return list(s.query(WebhookDelivery).filter(WebhookDelivery.run_id == run_id))


def test_completion_is_posted_once_signed_and_retried_after_a_failure(hooked: Any) -> None:
    app, _worker, receiver = hooked
    receiver.fail_first = 1  # the first attempt gets a 500: retried with backoff
    client = app.test_client()
    task_id = submit(client, {"input": "What is 17 * 23?", "webhook_url": receiver.url})
    doc = wait_terminal(client, task_id)
    assert doc["status"] == "completed"
    wait_for(lambda: [d.status for d in _deliveries(app, task_id)] == ["delivered"],
             timeout=30, what="the webhook to be delivered")
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    lowered = {k.lower(): v for k, v in headers.items()}
    payload = Webhook(SECRET).verify(body, lowered)  # raises if the signature is wrong
    assert payload["type"] == "task.completed"
    assert payload["data"]["task_id"] == task_id
    assert "391" in payload["data"]["result"]
    first_attempt = {k.lower(): v for k, v in receiver.requests[0][0].items()}
    assert lowered["webhook-id"] == first_attempt["webhook-id"]  # one event, one id
    delivery = _deliveries(app, task_id)[0]
    assert delivery.attempts == 2


def test_failure_and_cancellation_are_posted_too(hooked: Any) -> None:
    app, _worker, receiver = hooked
    client = app.test_client()
    failed = submit(client, {"input": "[loop] x", "webhook_url": receiver.url})
    wait_terminal(client, failed)
    slow = submit(client, {"input": "Hi", "webhook_url": receiver.url,
                           "metadata": {"simulator": {"latency_ms": 5000}}})
    wait_for(lambda: client.get(f"/agent/status/{slow}").get_json()["status"] == "running",
             timeout=30, what="the slow task to start")
    client.post(f"/agent/cancel/{slow}")
    wait_for(lambda: {d.event_type for d in _deliveries(app, failed) + _deliveries(app, slow)
                      if d.status == "delivered"} == {"task.failed", "task.cancelled"},
             timeout=30, what="both webhooks")
    types = [json.loads(body)["type"] for _h, body in receiver.requests]
    assert types.count("task.failed") == 1 and types.count("task.cancelled") == 1


def test_private_and_unconfigured_webhooks_are_refused_at_submission(
    hooked: Any, tmp_path: Path, redis_server: RedisServer, simulator: Any
) -> None:
    app, _worker, _receiver = hooked
    client = app.test_client()
    for url in ("http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data",
                "http://[::ffff:10.0.0.1]/x", "http://192.168.0.10/hook"):
        response = client.post("/agent/run", json={"input": "hi", "webhook_url": url})
        assert response.status_code == 422, url
        assert response.get_json()["error"]["field"] == "webhook_url"
    env = stack_env(redis_server.url(WEBHOOK_DB), f"sqlite:///{tmp_path / 'x.db'}",
                    simulator.url)
    bare = create_app(settings_from(env), configure_logs=False).test_client()
    response = bare.post("/agent/run", json={"input": "hi",
                                             "webhook_url": "https://example.com/hook"})
    assert response.status_code == 422
    assert "CELERIAC_WEBHOOK_SECRET" in response.get_json()["error"]["message"]
