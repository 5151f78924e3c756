"""The web tier as the Procfile runs it (gunicorn, config/gunicorn.py), tried as an
attacker and as a crowd of idle browsers would: slow and idle connections and open
event streams must not stall it, gunicorn's own errors are JSON, an oversized body
closes its connection, and an event stream ends once its API key is revoked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.harness import procfile_command
from bench.slowclients import hold_slow_clients, submit_body, time_requests
from celeriac.api_keys import create_key, revoke_key
from celeriac.store import Database
from tests.conftest import REDIS_DB, stack_env
from tests.support.services import (
    IN_CI,
    PROJECT_DIR,
    RedisServer,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    worker_env,
)
from tests.support.waiting import wait_for

# The figure: 1,000 slow or idle connections and 500 open event streams.
SLOW, STREAMS = 1000, 500


@dataclass
class Served:
    host: str
    port: int
    database_url: str
    log: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def _start_web(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = procfile_command("web", {"CELERIAC_WEB_PORT": str(port)})
    assert argv[0] == "gunicorn", argv
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", *argv[1:]],
                                   cwd=PROJECT_DIR, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=60, interval=0.2, what="gunicorn")
    return process, port


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def own_store(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store of this module's own: its tests make API keys, which would close the
    session's shared stores to every later test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('web-store') / 'store.db'}"
        return
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    url, name = created
    yield url
    drop_postgres_database(name)


@pytest.fixture(scope="module")
def served(own_store: str, redis_server: RedisServer, simulator: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """gunicorn on SQLite, then on PostgreSQL (psycopg under gevent's patched sockets)."""
    tmp = tmp_path_factory.mktemp("web")
    redis_url = redis_server.url(REDIS_DB["scratch"])
    database_url = own_store
    env = worker_env(stack_env(redis_url, database_url, simulator.url))
    env["CELERIAC_WEB_WORKERS"] = "2"
    log = tmp / "gunicorn.log"
    process, port = _start_web(env, log)
    try:
        yield Served("127.0.0.1", port, database_url, log)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        redis.Redis.from_url(redis_url).flushdb()


def _submit(served: Served, headers: dict[str, str] | None = None) -> str:
    answer = httpx.post(f"{served.base}/agent/run", json={"input": "What is 2 + 2?"},
                        headers=headers or {}, timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["task_id"])


def _raw(served: Served, data: bytes) -> bytes:
    """Send raw bytes; read until the server closes (it must, after its error)."""
    with socket.create_connection((served.host, served.port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_slow_clients_and_open_streams_do_not_stall_the_web_tier(served: Served) -> None:
    """With 1,000 slow or idle connections and 500 event streams open, health checks
    and submissions are still answered (gthread workers, 2 x 32 threads, stalled
    after about seventy). Latencies are printed; the bench's slow_clients workload
    reports them as figures."""
    queued = _submit(served)  # no worker runs: it stays queued, its streams stay open
    with hold_slow_clients(served.host, served.port, slow=SLOW, sse=STREAMS,
                           sse_task_id=queued) as held:
        assert held.counts() == {"partial_headers": 334, "partial_body": 333, "idle": 333,
                                 "sse": STREAMS}
        # Each stream has its first event before anything is timed.
        wait_for(lambda: _streams_started(held.sockets["sse"]), timeout=120, interval=0.5,
                 what="every event stream's first event")
        health = time_requests(served.host, served.port, "GET", "/healthz", count=100,
                               timeout_s=30)
        submits = time_requests(served.host, served.port, "POST", "/agent/run", count=50,
                                body=submit_body("What is 3 + 4?"),
                                headers={"Content-Type": "application/json"}, timeout_s=30)
        still_open = held.still_open()
    for name, timed, status in (("healthz", health, 200), ("submit", submits, 202)):
        assert not timed.errors, f"{name}: {len(timed.errors)} unanswered: {timed.errors[:5]}"
        assert timed.statuses == {status: len(timed.latencies_ms)}, timed.statuses
        ordered = sorted(timed.latencies_ms)
        print(f"{name} beside {SLOW} slow connections and {STREAMS} streams: "
              f"p50 {ordered[len(ordered) // 2]:.1f} ms, "
              f"p99 {ordered[int(len(ordered) * 0.99) - 1]:.1f} ms")
    # They were held, not shed: the test measured what it says it measured.
    assert still_open["sse"] == STREAMS, still_open
    assert still_open["idle"] + still_open["partial_headers"] + still_open["partial_body"] \
        >= SLOW * 0.9, still_open


def _streams_started(socks: list[socket.socket]) -> bool:
    for sock in socks:
        sock.setblocking(False)
        try:
            if b"event: status" not in sock.recv(65536, socket.MSG_PEEK):
                return False
        except BlockingIOError:
            return False
    return True


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
         "header_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n", 431, "header_too_large"),
    ],
    ids=["uri-too-long", "bad-request-line", "header-too-large", "too-many-headers"],
)
def test_errors_gunicorn_answers_itself_are_json(
    served: Served, raw: bytes, status: int, code: str
) -> None:
    got, headers, body = _split(_raw(served, raw))
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code


def test_an_oversized_body_is_refused_and_its_connection_closed(served: Served) -> None:
    """413 before the body is read, with Connection: close, and then the server
    closes: the unread body can never be taken for the next request."""
    request = (b"POST /agent/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 5000000\r\n\r\n{\"input\": \"")
    status, headers, body = _split(_raw(served, request))  # returns only once closed
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    # A request within the limit on a kept-alive connection is still kept alive.
    with httpx.Client(base_url=served.base, timeout=30) as client:
        first = client.get("/healthz")
        assert first.headers["connection"] == "keep-alive"
        assert client.get("/healthz").status_code == 200


def test_an_event_stream_ends_when_its_key_is_revoked(served: Served) -> None:
    db = Database(served.database_url)
    try:
        key = create_key(db, "revoked-tenant")
        auth = {"Authorization": f"Bearer {key}"}
        task_id = _submit(served, auth)
        with httpx.Client(base_url=served.base, timeout=60) as client, \
                client.stream("GET", f"/agent/events/{task_id}", headers=auth) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            wait_until_line(lines, "event: status")
            assert revoke_key(db, key)
            # The stream would otherwise stay open for ten minutes (its task stays
            # queued): the client's read timeout (60 s) fails the test.
            rest = list(lines)
        assert "event: error" in rest, rest
        error = json.loads(next(line for line in rest if line.startswith("data: {\"code"))[6:])
        assert error["code"] == "unauthorized"
        # And the key no longer opens one.
        refused = httpx.get(f"{served.base}/agent/events/{task_id}", headers=auth, timeout=30)
        assert refused.status_code == 401
    finally:
        db.dispose()


def wait_until_line(lines: Iterator[str], wanted: str) -> None:
    for line in lines:
        if line == wanted:
            return
    raise AssertionError(f"the stream ended before {wanted!r}")
