"""Hostile input, on SQLite and PostgreSQL alike: every request that is not (storable)
JSON, every impossible id, header and query value gets a 4xx JSON error naming the
field, never a 5xx; nothing stored makes a later answer invalid JSON; and an
Idempotency-Key reused with a different request is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import update

from app import create_app
from celeriac.clock import utcnow
from celeriac.store import Database, Run
from tests.conftest import settings_from, stack_env
from tests.support.databases import fresh_database
from tests.support.services import RedisServer

HOSTILE_DB = 14  # Redis database of these apps' queues (no worker reads them)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                marks=pytest.mark.postgres)])
def client(request: pytest.FixtureRequest, redis_server: RedisServer, simulator: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """The web app alone on a fresh store of each kind."""
    redis_url = redis_server.url(HOSTILE_DB)
    with fresh_database(request.param, tmp_path_factory.mktemp("hostile")) as url:
        env = stack_env(redis_url, url, simulator.url)
        env["CELERIAC_WEBHOOK_SECRET"] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        app = create_app(settings_from(env), configure_logs=False)
        yield app.test_client()
        app.extensions["celeriac"].services.db.dispose()
    redis.Redis.from_url(redis_url).flushdb()


def _db(client: FlaskClient) -> Database:
    db: Database = client.application.extensions["celeriac"].services.db
    return db


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body: dict[str, Any] = strict_json_answer(response.data)["error"]
    assert body["code"] and body["message"]
    return body


def strict_json_answer(data: bytes) -> Any:
    """Parse as JSON is defined: UTF-8, and no NaN or Infinity."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in an answer: {data[:300]!r}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


DEEP = '{"input": "hi", "metadata": {"k": ' + "[" * 40 + "]" * 40 + "}}"
HOSTILE_BODIES: list[tuple[str, bytes, int, str | None]] = [
    # (what, body, status, field)
    ("NUL in input", b'{"input": "a\\u0000b"}', 422, "input"),
    ("NUL in webhook_url", b'{"input": "a", "webhook_url": "https://example.com/\\u0000"}',
     422, "webhook_url"),
    ("NUL in agent", b'{"input": "a", "agent": "default\\u0000"}', 422, "agent"),
    ("NUL in model", b'{"input": "a", "model": "gpt\\u0000"}', 422, "model"),
    ("NUL in thread_id", b'{"input": "a", "thread_id": "t\\u0000"}', 422, "thread_id"),
    ("NUL in a metadata key", b'{"input": "a", "metadata": {"k\\u0000": 1}}', 422, "metadata"),
    ("NUL deep in metadata", b'{"input": "a", "metadata": {"a": ["ok", "x\\u0000"]}}', 422,
     "metadata.a.1"),
    ("a lone surrogate", b'{"input": "a\\udc00"}', 422, "input"),
    ("a lone surrogate in metadata", b'{"input": "a", "metadata": {"k": "\\ud800"}}', 422,
     "metadata.k"),
    ("NaN", b'{"input": "a", "metadata": {"k": NaN}}', 400, "metadata.k"),
    ("Infinity", b'{"input": "a", "budget_usd": Infinity}', 400, "budget_usd"),
    ("-Infinity", b'{"input": "a", "metadata": {"k": [1, -Infinity]}}', 400, "metadata.k.1"),
    ("a float beyond a double", b'{"input": "a", "metadata": {"k": 1e400}}', 422, "metadata.k"),
    ("a negative one", b'{"input": "a", "budget_usd": -1e400}', 422, "budget_usd"),
    ("an integer beyond a double", b'{"input": "a", "metadata": {"n": 1' + b"0" * 400 + b"}}",
     422, "metadata.n"),
    ("an integer past int()'s limit", b'{"input": "a", "metadata": {"n": ' + b"9" * 5000
     + b"}}", 422, "metadata.n"),
    ("metadata nested 40 deep", DEEP.encode(), 400, None),
    ("nesting past the interpreter's stack", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("bytes that are not UTF-8", b'{"input": "\xff\xfe"}', 400, None),
]


@pytest.mark.parametrize(("what", "body", "status", "field"), HOSTILE_BODIES,
                         ids=[case[0] for case in HOSTILE_BODIES])
def test_hostile_bodies_are_4xx_naming_the_field(
    client: FlaskClient, what: str, body: bytes, status: int, field: str | None
) -> None:
    error = _error(client.post("/agent/run", data=body, content_type="application/json"),
                   status)
    assert error["code"] == ("malformed_json" if status == 400 else "validation_error")
    if field is not None:
        assert error.get("field") == field, error


def test_nesting_within_the_limit_is_accepted(client: FlaskClient) -> None:
    body = '{"input": "hi", "metadata": {"k": ' + "[" * 20 + "]" * 20 + "}}"
    response = client.post("/agent/run", data=body, content_type="application/json")
    assert response.status_code == 202, response.data[:300]


def test_nothing_stored_makes_a_later_answer_invalid_json(client: FlaskClient) -> None:
    for _, body, _, _ in HOSTILE_BODIES:
        client.post("/agent/run", data=body, content_type="application/json")
    accepted = client.post("/agent/run", json={"input": "fine", "metadata": {"x": 1.5e300}})
    assert accepted.status_code == 202
    listing = client.get("/agent/tasks?limit=100")
    assert listing.status_code == 200
    items = strict_json_answer(listing.data)["items"]
    assert items
    for item in items:
        for path in (f"/agent/status/{item['task_id']}", f"/agent/tasks?status={item['status']}"):
            answer = client.get(path)
            assert answer.status_code == 200
            strict_json_answer(answer.data)
        doc = strict_json_answer(client.get(f"/agent/status/{item['task_id']}").data)
        assert doc["status"] == "queued"
        strict_json_answer(client.get(f"/agent/threads/{doc['thread_id']}").data)


IMPOSSIBLE_IDS = ["a%00b", "%00", "x" * 5000, "%C3%A9t%C3%A9", "%ED%A0%80", "a.b", "%20"]


@pytest.mark.parametrize("ident", IMPOSSIBLE_IDS, ids=lambda i: i[:12])
def test_impossible_path_ids_are_404_on_every_route(client: FlaskClient, ident: str) -> None:
    for response in (
        client.get(f"/agent/status/{ident}"),
        client.get(f"/agent/events/{ident}"),
        client.post(f"/agent/cancel/{ident}"),
        client.get(f"/agent/threads/{ident}"),
    ):
        assert _error(response, 404)["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/agent/tasks?limit=%D9%A1", "limit"),  # an Arabic-Indic 1: int() takes it
        ("/agent/tasks?limit=1_0", "limit"),
        ("/agent/tasks?limit=%201%20", "limit"),
        ("/agent/tasks?limit=%00", "limit"),
        ("/agent/tasks?offset=" + "9" * 5000, "offset"),
        ("/agent/tasks?status=%00", "status"),
        ("/agent/usage?since=%00", "since"),
        ("/agent/usage?since=2024-W01-1", "since"),  # fromisoformat() takes it
        ("/agent/usage?until=20240101", "until"),
        ("/agent/usage?until=%D9%A2%D9%A0%D9%A2%D9%A4-01-01", "until"),
    ],
)
def test_hostile_query_values_are_422_naming_the_field(
    client: FlaskClient, query: str, field: str
) -> None:
    assert _error(client.get(query), 422)["field"] == field


def test_query_values_at_their_bounds_are_answered(client: FlaskClient) -> None:
    for query in ("/agent/tasks?limit=100&offset=1000000000",
                  "/agent/usage?since=0001-01-01&until=0001-01-01",
                  "/agent/usage?until=9999-12-31", "/agent/usage?since=9999-12-31"):
        response = client.get(query)
        assert response.status_code == 200, (query, response.data[:300])
        strict_json_answer(response.data)


@pytest.fixture
def ended_task(client: FlaskClient) -> str:
    """A cancelled task: its event stream ends at once."""
    task_id: str = client.post("/agent/run", json={"input": "hi"}).get_json()["task_id"]
    assert client.post(f"/agent/cancel/{task_id}").get_json()["status"] == "cancelled"
    return task_id


# Superscript two: isdigit() says yes, int() raises. As a header it arrives as
# latin-1; in the query, percent-encoded UTF-8.
BAD_EVENT_IDS = ["\u00b2", "-1", "+1", " 5", "1e3", "0x1f", "9" * 19, "9" * 5000]


@pytest.mark.parametrize("value", BAD_EVENT_IDS, ids=lambda v: v[:8])
def test_hostile_last_event_id_is_422(client: FlaskClient, ended_task: str, value: str) -> None:
    by_header = client.get(f"/agent/events/{ended_task}", headers={"Last-Event-ID": value})
    assert _error(by_header, 422)["field"] == "Last-Event-ID"
    by_query = client.get(f"/agent/events/{ended_task}", query_string={"last_event_id": value})
    assert _error(by_query, 422)["field"] == "Last-Event-ID"
    arabic = client.get(f"/agent/events/{ended_task}?last_event_id=%D9%A1%D9%A2",
                        headers={"Last-Event-ID": "1"})  # checked even beside a good one
    assert _error(arabic, 422)["field"] == "Last-Event-ID"


def test_a_good_last_event_id_resumes(client: FlaskClient, ended_task: str) -> None:
    whole = client.get(f"/agent/events/{ended_task}").get_data(as_text=True)
    assert "event: status" in whole and "event: end" in whole
    for value in ("", "0", "9" * 18):
        response = client.get(f"/agent/events/{ended_task}", headers={"Last-Event-ID": value})
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        text = response.get_data(as_text=True)
        assert "event: end" in text
        assert ("event: status" in text) == (value in ("", "0"))


def test_idempotency_key_with_the_same_request_is_the_same_task(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": "same-request"}
    first = client.post("/agent/run", json={"input": "hi", "metadata": {"a": 1, "b": 2}},
                        headers=headers)
    # The same request, spelled differently: key order, defaults written out.
    again = client.post("/agent/run", headers=headers,
                        json={"metadata": {"b": 2, "a": 1}, "agent": "default", "input": "hi"})
    assert first.status_code == 202
    assert again.status_code == 200, again.data[:300]
    assert again.get_json()["task_id"] == first.get_json()["task_id"]


@pytest.mark.parametrize("change", [{"input": "bye"}, {"priority": "high"},
                                    {"metadata": {"a": 2}}, {"budget_usd": 0.5}])
def test_idempotency_key_with_a_different_request_is_422(
    client: FlaskClient, change: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": f"reused-{sorted(change)[0]}"}
    first = client.post("/agent/run", json={"input": "hi", "metadata": {"a": 1}}, headers=key)
    assert first.status_code == 202
    other = client.post("/agent/run", json={"input": "hi", "metadata": {"a": 1}, **change},
                        headers=key)
    error = _error(other, 422)
    assert error["code"] == "idempotency_key_reused"
    assert error["field"] == "Idempotency-Key"
    # and the first request, retried, still answers its task
    retried = client.post("/agent/run", json={"input": "hi", "metadata": {"a": 1}}, headers=key)
    assert retried.status_code == 200
    assert retried.get_json()["task_id"] == first.get_json()["task_id"]


def test_a_task_from_before_fingerprints_still_answers_its_key(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "from-before"}
    first = client.post("/agent/run", json={"input": "hi"}, headers=key).get_json()["task_id"]
    with _db(client).session() as session:  # as a store migrated from 0004 holds it
        session.execute(update(Run).where(Run.id == first).values(request_fingerprint=None))
    again = client.post("/agent/run", json={"input": "something else"}, headers=key)
    assert again.status_code == 200
    assert again.get_json()["task_id"] == first


@pytest.mark.parametrize("key", ["k\x00", "ké", "tab\there", "x" * 256, ""])
def test_an_impossible_idempotency_key_is_422(client: FlaskClient, key: str) -> None:
    response = client.post("/agent/run", json={"input": "hi"}, headers={"Idempotency-Key": key})
    assert _error(response, 422)["field"] == "Idempotency-Key"


def test_a_non_finite_number_stored_before_is_served_as_null(client: FlaskClient) -> None:
    """SQLite kept the NaN that json.loads let through; the answer stays JSON.
    (PostgreSQL never stored one: its json type refuses NaN.)"""
    db = _db(client)
    if not db.is_sqlite:
        pytest.skip("PostgreSQL's json type never held a NaN")
    now = utcnow()
    with db.session() as session:
        session.add(Run(id="from-before-nan", agent="default", agent_version="1", model="m",
                        input="hi", meta={"k": float("nan"), "ok": [1, float("inf")]},
                        status="completed", created_at=now, updated_at=now))
    answer = client.get("/agent/status/from-before-nan")
    assert answer.status_code == 200
    assert strict_json_answer(answer.data)["metadata"] == {"k": None, "ok": [1, None]}
    # The event stream too (the run has ended, so the stream does).
    stream = client.get("/agent/events/from-before-nan")
    data = [line[6:] for line in stream.get_data(as_text=True).splitlines()
            if line.startswith("data: ")]
    assert len(data) == 2, data  # status, end
    assert strict_json_answer(data[0].encode())["metadata"] == {"k": None, "ok": [1, None]}


def test_a_request_id_is_echoed_only_when_printable(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "req-42"}).headers[
        "X-Request-ID"] == "req-42"
    for hostile in ("\x00", "a\x01b", "tab\there", "é"):
        echoed = client.get("/healthz", headers={"X-Request-ID": hostile}).headers[
            "X-Request-ID"]
        assert len(echoed) == 32 and echoed.isalnum(), repr(echoed)
