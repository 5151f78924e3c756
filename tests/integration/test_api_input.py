"""Bad input never yields a 5xx or an HTML page: always {"error": {code, message, field?}}."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()["error"]
    assert body["code"] and body["message"]
    return body


def test_malformed_json_is_400(api: FlaskClient) -> None:
    body = _error(api.post("/agent/run", data="{nope", content_type="application/json"), 400)
    assert body["code"] == "malformed_json"


def test_non_object_json_is_400(api: FlaskClient) -> None:
    _error(api.post("/agent/run", data="[1, 2]", content_type="application/json"), 400)


def test_deeply_nested_json_is_400_not_a_crash(api: FlaskClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _error(api.post("/agent/run", data=deep, content_type="application/json"), 400)


def test_wrong_content_type_is_415(api: FlaskClient) -> None:
    body = _error(api.post("/agent/run", data="input=hi", content_type="text/plain"), 415)
    assert body["code"] == "unsupported_media_type"


def test_body_over_limit_is_413(api: FlaskClient) -> None:
    payload = json.dumps({"input": "x" * 1_100_000})
    _error(api.post("/agent/run", data=payload, content_type="application/json"), 413)


def test_body_over_limit_without_content_length_is_413(live_api: str) -> None:
    """A chunked body has no Content-Length: the limit must hold while reading."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(live_api)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/agent/run")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for chunk in [b'{"input": "', *([b"x" * 65536] * 20), b'"}']:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading everything
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 413, body
    assert body["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "input"),
        ({"input": 42}, "input"),
        ({"input": ""}, "input"),
        ({"input": "hi", "priority": "urgent"}, "priority"),
        ({"input": "hi", "priority": 12}, "priority"),
        ({"input": "hi", "priority": True}, "priority"),
        ({"input": "hi", "budget_usd": -1}, "budget_usd"),
        ({"input": "hi", "budget_usd": "1"}, "budget_usd"),
        ({"input": "hi", "webhook_url": "ftp://x"}, "webhook_url"),
        ({"input": "hi", "metadata": []}, "metadata"),
        ({"input": "hi", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    api: FlaskClient, payload: dict[str, Any], field: str
) -> None:
    body = _error(api.post("/agent/run", json=payload), 422)
    assert body["field"].split(".")[0] == field


def test_unknown_agent_and_model_are_422(api: FlaskClient) -> None:
    assert _error(api.post("/agent/run", json={"input": "hi", "agent": "nope"}), 422)[
        "code"
    ] == "unknown_agent"
    assert _error(api.post("/agent/run", json={"input": "hi", "model": "gpt-9"}), 422)[
        "code"
    ] == "unknown_model"
    assert _error(api.post("/agent/run", json={"input": "hi", "agent": "default@7"}), 422)[
        "field"
    ] == "agent"


def test_unknown_task_is_404_everywhere(api: FlaskClient) -> None:
    for response in (
        api.get("/agent/status/does-not-exist"),
        api.get("/agent/events/does-not-exist"),
        api.post("/agent/cancel/does-not-exist"),
    ):
        assert _error(response, 404)["code"] == "not_found"


def test_unknown_route_and_method_are_json(api: FlaskClient) -> None:
    _error(api.get("/nope"), 404)
    _error(api.get("/agent/run"), 405)


def test_list_filters_are_validated(api: FlaskClient) -> None:
    assert _error(api.get("/agent/tasks?status=weird"), 422)["field"] == "status"
    assert _error(api.get("/agent/tasks?limit=0"), 422)["field"] == "limit"
    assert _error(api.get("/agent/tasks?limit=abc"), 422)["field"] == "limit"


def test_accepted_task_answers_202_with_location(api: FlaskClient) -> None:
    response = api.post("/agent/run", json={"input": "What is 17 * 23?", "priority": 8})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"/agent/status/{body['task_id']}"
    assert response.headers["Location"] == body["status_url"]
    doc = api.get(body["status_url"]).get_json()
    assert doc["priority"] == "high"
    assert doc["status"] == "queued"
    assert doc["progress"] == 0


def test_idempotency_key_returns_the_same_task(api: FlaskClient) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/agent/run", json={"input": "hi"}, headers=headers)
    second = api.post("/agent/run", json={"input": "hi"}, headers=headers)
    other = api.post("/agent/run", json={"input": "hi"}, headers={"Idempotency-Key": "order-43"})
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.get_json()["task_id"] == second.get_json()["task_id"]
    assert other.get_json()["task_id"] != first.get_json()["task_id"]
    listed = api.get("/agent/tasks?limit=100").get_json()
    ids = [item["task_id"] for item in listed["items"]]
    assert ids.count(first.get_json()["task_id"]) == 1


def test_task_list_is_newest_first_and_paginated(api: FlaskClient) -> None:
    ids = [api.post("/agent/run", json={"input": f"n{i}"}).get_json()["task_id"] for i in range(5)]
    page = api.get("/agent/tasks?limit=2").get_json()
    assert page["total"] == 5
    assert [i["task_id"] for i in page["items"]] == ids[::-1][:2]
    page2 = api.get("/agent/tasks?limit=2&offset=2").get_json()
    assert [i["task_id"] for i in page2["items"]] == ids[::-1][2:4]
    queued = api.get("/agent/tasks?status=queued").get_json()
    assert queued["total"] == 5
    assert api.get("/agent/tasks?status=completed").get_json()["total"] == 0


def test_openapi_describes_every_route_from_the_request_schema(api: FlaskClient) -> None:
    doc = api.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for path in ("/agent/run", "/agent/status/{task_id}", "/agent/events/{task_id}",
                 "/agent/cancel/{task_id}", "/agent/tasks", "/agent/threads/{thread_id}",
                 "/healthz", "/readyz"):
        assert path in doc["paths"], path
    run_schema = doc["components"]["schemas"]["RunRequest"]
    assert run_schema["required"] == ["input"]
    assert set(run_schema["properties"]) == {
        "input", "agent", "model", "priority", "budget_usd", "webhook_url", "metadata",
        "thread_id",
    }


def test_health_and_readiness(api: FlaskClient) -> None:
    assert api.get("/healthz").get_json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"store": "ok", "redis": "ok", "broker": "ok"}


def test_the_form_is_served_without_external_assets(api: FlaskClient) -> None:
    page = api.get("/")
    assert page.status_code == 200
    html = page.data.decode()
    assert "/static/app.js" in html
    assert "http://" not in html and "https://" not in html
    assert api.get("/static/app.js").status_code == 200
