"""Secrets never leak; the broker takes JSON only."""

from __future__ import annotations

import json
import pickle
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
import redis
from flask import Flask
from kombu import Connection, Exchange, Producer
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, select
from standardwebhooks import Webhook

from app import create_app
from app.exporter import build_app
from tests.conftest import settings_from, stack_env
from tests.integration.test_webhook_flow import Receiver
from tests.support.config import config_with_agents
from tests.support.runs import submit, wait_terminal
from tests.support.services import PROJECT_DIR, RedisServer, WorkerProcess, start_worker
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


# -- whatever a provider, a tool or an MCP server sends back --------------------------

LEAK_DB = 7
# Every secret the server holds, each a canary of its own. The passwords carry
# characters that URLs percent-encode, so their encoded forms are checked too.
LEAKY_SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-leak-canary-5b7e0c2a9d1f4e36",
    "OPENAI_API_KEY": "sk-proj-leak-canary-8a3f6d2c1b9e7045",
    "CELERIAC_WEBHOOK_SECRET": "whsec_bGVha2NhbmFyeXdlYmhvb2tzZWNyZXQwMDAwMDA=",
    "CELERIAC_METRICS_TOKEN": "metrics-canary-3e9d7a1c5f",
    "FLOWER_BASIC_AUTH": "admin:flower-canary-6c2b8e4d",
}
REDIS_PASSWORD = "redis-canary/4f8a+2d"  # a user-less Redis takes any password
POSTGRES_PASSWORD = "pg-canary@9e3c#71"  # trust auth takes any password
MCP_SERVER = PROJECT_DIR / "tests" / "fixtures" / "mcp_echo_server.py"
LEAKY_AGENT = f'''
[agents.leaky]
description = "Calls tools that answer with the server's secrets."

[[agents.leaky.versions]]
version = "1"
model = "claude-haiku-4-20250514"
tools = ["server_secrets"]
mcp_servers = [{{ name = "echo", command = "{sys.executable}", args = ["{MCP_SERVER}"], \
env = {{ LEAKED = "{LEAKY_SECRETS['OPENAI_API_KEY']}" }} }}]
max_steps = 4
'''


def _with_password(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or user
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), secret.split(":", 1)[-1]}


@pytest.fixture(scope="module")
def leaky(backend: tuple[str, str], redis_server: RedisServer, simulator: Any,
          tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Flask, WorkerProcess, dict[str, str], Receiver]]:
    """Real-provider mode pointed at the simulator, with every kind of secret set:
    provider keys, webhook secret, metrics token, Flower's login, and passwords in
    the Redis, broker and (PostgreSQL) database URLs."""
    name, database_url = backend
    tmp = tmp_path_factory.mktemp(f"leaky-{name}")
    redis_url = _with_password(redis_server.url(LEAK_DB), "default", REDIS_PASSWORD)
    redis.Redis.from_url(redis_url).flushdb()
    if name == "postgres":
        database_url = _with_password(database_url, "postgres", POSTGRES_PASSWORD)
    env = stack_env(redis_url, database_url, simulator.url)
    env.update(LEAKY_SECRETS)
    env.update(
        CELERIAC_SIMULATE="0",
        ANTHROPIC_BASE_URL=simulator.url,
        OPENAI_BASE_URL=simulator.url + "/v1",
        BROKER_URL=redis_url,
        CELERIAC_WEBHOOK_ALLOW_LOOPBACK="1",
        CELERIAC_EXTRA_TOOLS="tests.support.leaky_tools:make_tools",
        CELERIAC_CONFIG_DIR=str(config_with_agents(tmp / "config", LEAKY_AGENT)),
    )
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery)
    receiver = Receiver()
    yield app, worker, env, receiver
    receiver.server.shutdown()
    worker.stop()
    app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def test_secrets_echoed_by_providers_and_tools_are_scrubbed_everywhere(
    leaky: Any, simulator: Any
) -> None:
    app, worker, env, receiver = leaky
    client = app.test_client()
    hook = {"webhook_url": receiver.url}
    # Both SDKs, a 401 and a 400 whose error bodies repeat the key the call sent.
    refused = {
        (agent, status): submit(client, {"input": f"[sim-fault:{status}-echo-key] hi",
                                         "agent": agent, **hook})
        for agent in ("default", "openai") for status in (401, 400)
    }
    # A built-in-style tool and an MCP server that answer with secrets.
    told = submit(client, {"input": "[tool:server_secrets {}]", "agent": "leaky", **hook})
    mcp = submit(client, {"input": '[tool:echo__getenv {"name": "LEAKED"}]', "agent": "leaky",
                          **hook})
    ids = [*refused.values(), told, mcp]
    docs = {task_id: wait_terminal(client, task_id) for task_id in ids}

    # The errors stay useful: their code, and their text around the secret.
    for (_agent, status), task_id in refused.items():
        doc = docs[task_id]
        assert doc["status"] == "failed", doc
        error = doc["error"]
        code = "provider_auth_failed" if status == 401 else "provider_bad_request"
        assert error["code"] == code, error
        assert "API key [REDACTED] was not accepted" in error["message"], error
    assert docs[told]["status"] == "completed", docs[told]
    assert "anthropic=[REDACTED]" in docs[told]["result"]
    assert "[REDACTED]" in docs[mcp]["result"]

    wait_for(lambda: len(receiver.requests) >= len(ids), timeout=60,
             what="a webhook for every task")
    secret = env["CELERIAC_WEBHOOK_SECRET"]
    delivered = [Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
                 for headers, body in receiver.requests]
    assert {p["data"]["task_id"] for p in delivered} == set(ids)

    places: dict[str, str] = {
        "status API": json.dumps(list(docs.values())),
        "event streams": "".join(client.get(f"/agent/events/{t}").get_data(as_text=True)
                                 for t in ids),
        "webhook bodies": "".join(body.decode() for _h, body in receiver.requests),
        "task list": client.get("/agent/tasks").get_data(as_text=True),
        "worker log": worker.log(),
        "store": _dump_store(app),
        "redis": _dump_redis(env["REDIS_URL"]),
    }
    assert "[REDACTED]" in places["event streams"] and "[REDACTED]" in places["webhook bodies"]
    secrets = {*LEAKY_SECRETS.values(), REDIS_PASSWORD}
    if "postgres" in env["DATABASE_URL"]:
        secrets.add(POSTGRES_PASSWORD)
    for value in secrets:
        for form in _forms(value):
            leaks = [where for where, text in places.items() if form in text]
            assert not leaks, f"{form!r} leaked into {leaks}"


def _dump_store(app: Flask) -> str:
    """Every column of every row of every table, as text."""
    engine = app.extensions["celeriac"].services.db.engine
    meta = MetaData()
    meta.reflect(engine)
    rows: list[str] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                rows.append(f"{table.name}: {json.dumps([str(v) for v in row])}")
    assert any(r.startswith("steps:") for r in rows)
    return "\n".join(rows)


def _dump_redis(url: str) -> str:
    r = redis.Redis.from_url(url)
    dump = []
    for key in r.scan_iter("*"):
        kind = r.type(key).decode()
        value: Any = {
            "string": lambda k: r.get(k), "hash": lambda k: r.hgetall(k),
            "list": lambda k: r.lrange(k, 0, -1), "set": lambda k: r.smembers(k),
            "zset": lambda k: r.zrange(k, 0, -1),
        }.get(kind, lambda k: b"")(key)
        dump.append(f"{key!r} {value!r}")
    return "\n".join(dump)
