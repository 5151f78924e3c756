"""Secrets never leak; the broker takes JSON only."""

from __future__ import annotations

import json
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from kombu import Connection, Exchange, Producer
from prometheus_client import CollectorRegistry

from app import create_app
from app.exporter import build_app
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for

SECURITY_DB = 6
CANARY = "sk-ant-canary-7f3c9e21d4b84a0f9c1e"
OPENAI_CANARY = "sk-proj-canary-1c2d3e4f5a6b7c8d9e0f"


@pytest.fixture(scope="module")
def keyed(redis_server: RedisServer, simulator: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, WorkerProcess,
                                                                      dict[str, str], Path]]:
    """Real-provider mode (keys set, simulation off), pointed at the simulator by the
    SDKs' standard base-URL variables: the canary keys travel as real keys would."""
    tmp = tmp_path_factory.mktemp("security")
    redis_url = redis_server.url(SECURITY_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env.update(
        CELERIAC_SIMULATE="0",
        ANTHROPIC_API_KEY=CANARY,
        OPENAI_API_KEY=OPENAI_CANARY,
        ANTHROPIC_BASE_URL=simulator.url,
        OPENAI_BASE_URL=simulator.url + "/v1",
    )
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery)
    yield app, worker, env, tmp
    worker.stop()
    redis.Redis.from_url(redis_url).flushdb()


def test_canary_keys_appear_nowhere(keyed: Any, simulator: Any) -> None:
    app, worker, env, _tmp = keyed
    client = app.test_client()
    ok = submit(client, {"input": "What is 17 * 23?"})
    openai_ok = submit(client, {"input": "What is 2 + 2?", "agent": "openai"})
    failing = submit(client, {"input": "[loop] again"})  # ends failed: max_steps
    docs = [wait_terminal(client, t) for t in (ok, openai_ok, failing)]
    assert docs[0]["status"] == "completed" and "391" in docs[0]["result"]
    assert docs[2]["status"] == "failed"
    places: dict[str, str] = {}
    places["worker log"] = worker.log()
    r = redis.Redis.from_url(env["REDIS_URL"])
    dump = []
    for key in r.scan_iter("*"):
        kind = r.type(key).decode()
        value: Any = {
            "string": lambda k: r.get(k), "hash": lambda k: r.hgetall(k),
            "list": lambda k: r.lrange(k, 0, -1), "set": lambda k: r.smembers(k),
            "zset": lambda k: r.zrange(k, 0, -1),
        }.get(kind, lambda k: b"")(key)
        dump.append(f"{key!r} {value!r}")
    places["redis"] = "\n".join(dump)
    places["store"] = Path(env["DATABASE_URL"].removeprefix("sqlite:///")).read_bytes().decode(
        "latin-1")
    with sqlite3.connect(env["DATABASE_URL"].removeprefix("sqlite:///")) as conn:
        places["store rows"] = json.dumps(
            [list(map(str, row)) for t in ("runs", "steps", "ledger")
             for row in conn.execute(f"SELECT * FROM {t}")])
    places["status API"] = json.dumps(docs)
    places["task list"] = client.get("/agent/tasks").get_data(as_text=True)
    places["providers API"] = client.get("/agent/providers").get_data(as_text=True)
    places["dashboard data"] = client.get("/agent/dashboard/data").get_data(as_text=True)
    places["simulator log"] = json.dumps(simulator.log())
    metrics_app = build_app(settings_from(env), registry=CollectorRegistry())
    body: list[bytes] = []
    for chunk in metrics_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics",
                              "QUERY_STRING": "", "wsgi.url_scheme": "http",
                              "SERVER_NAME": "x", "SERVER_PORT": "1"},
                             lambda *_a: None):
        body.append(chunk)
    places["metrics"] = b"".join(body).decode()
    assert "agent_requests_total" in places["metrics"]
    for canary in (CANARY, OPENAI_CANARY):
        for fragment in (canary, canary[8:24]):
            leaks = [where for where, text in places.items() if fragment in text]
            assert not leaks, f"{fragment} leaked into {leaks}"


class _TouchOnUnpickle:
    """A hostile payload: unpickling it calls Path.touch(path), so a worker that ever
    unpickled a message would leave the file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.path,)


def test_a_pickled_message_is_refused(keyed: Any, tmp_path: Path) -> None:
    app, worker, env, _tmp = keyed
    marker = tmp_path / "pwned"
    # The payload is live: unpickled here, its own twin creates its file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control)))
    assert control.exists()
    payload = pickle.dumps(_TouchOnUnpickle(marker))
    with Connection(env["REDIS_URL"]) as conn:
        producer = Producer(conn, exchange=Exchange("celeriac", type="direct"),
                            routing_key="default", serializer="pickle")
        producer.publish(
            payload,
            headers={"task": "celeriac.llm_step", "id": "evil-1", "argsrepr": "()"},
            content_type="application/x-python-serialize",
            content_encoding="binary",
            declare=[],
        )
    wait_for(lambda: "evil-1" in worker.log() or "disallowed" in worker.log().lower(),
             timeout=30, what="the worker to refuse the message")
    log = worker.log().lower()
    assert "contentdisallowed" in log or "refusing to deserialize" in log or "disallowed" in log
    assert not marker.exists()
    # And the worker still works.
    client = app.test_client()
    doc = wait_terminal(client, submit(client, {"input": "still alive?"}))
    assert doc["status"] == "completed"


def test_provider_key_is_sent_to_the_provider_only_as_a_header(simulator: Any) -> None:
    # The simulator accepts any key and never logs it; a sanity check of the path.
    response = httpx.post(f"{simulator.url}/v1/messages", headers={"x-api-key": CANARY},
                          json={"model": "claude-haiku-4-20250514", "max_tokens": 10,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert CANARY not in json.dumps(simulator.log())
