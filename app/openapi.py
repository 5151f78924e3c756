"""``/openapi.json``, generated from the pydantic models that validate requests.

Kept by hand rather than through flask-openapi3 or spectree: both replace Flask's
error responses with their own shapes, and ours must stay ``{"error": {...}}``
everywhere. The schemas themselves come from pydantic, so there is one source.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from pydantic.json_schema import models_json_schema

from app import schemas
from app.context import web
from celeriac import __version__

bp = Blueprint("openapi", __name__)

_MODELS = (
    schemas.RunRequest,
    schemas.RunAccepted,
    schemas.RunStatus,
    schemas.ThreadView,
    schemas.ErrorResponse,
    schemas.TaskList,
    schemas.AgentList,
    schemas.ProviderList,
    schemas.UsageReport,
    schemas.Health,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON",
        404: "Unknown task or thread",
        413: "Body too large",
        415: "Content-Type is not application/json",
        422: "Invalid field, unknown agent or model, or provider not configured",
        429: "A daily budget is spent, or too many requests for this API key (Retry-After)",
        503: "Broker unavailable",
    }
    return {str(s): _json("ErrorResponse", text[s]) for s in statuses}


_RUN_422 = (
    "Invalid field (`validation_error`, with the field: NUL characters, numbers beyond a "
    "double, ...), unknown agent or model, provider not configured, or the "
    "Idempotency-Key already used with a different request (`idempotency_key_reused`)"
)

_AUTH_ERRORS = {
    401: "No valid API key (required once any key exists, and always outside dev mode)",
    429: "Too many requests for this API key (Retry-After), or a daily budget is spent",
    503: "A dependency (the store, Redis, the broker) is down or too slow; retry after "
         "Retry-After",
}

_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}


# How a client sends its key: the scheme code generators and API tools read.
_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, from `celeriac keys create TENANT` (printed once).",
}


def build_document(*, key_required: bool = True) -> dict[str, Any]:
    """The document. ``key_required``: whether this server refuses /agent/* without a
    key (outside dev mode, or once any key exists); in dev mode before the first key
    the key is declared optional, as it is."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, Any] = {
        "/agent/run": {
            "post": {
                "summary": "Submit an agent task; answers at once",
                "operationId": "runAgent",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Retrying with the same key and request answers "
                                       "the earlier task (200); the same key with a "
                                       "different request is refused (422)",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                   "pattern": schemas.IDEMPOTENCY_KEY_PATTERN},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RunRequest")}},
                },
                "responses": {
                    "202": {
                        **_json("RunAccepted", "Accepted; poll status_url"),
                        "links": {
                            "GetThread": {
                                "operationId": "getThread",
                                "parameters": {"thread_id": "$response.body#/thread_id"},
                            }
                        },
                    },
                    "200": _json("RunAccepted", "Same Idempotency-Key: the earlier task"),
                    **_errors(400, 404, 413, 415, 429, 503),
                    "422": _json("ErrorResponse", _RUN_422),
                },
            }
        },
        "/agent/status/{task_id}": {
            "get": {
                "summary": "Status, progress, steps and result of a task",
                "operationId": "getStatus",
                "parameters": [_TASK_ID],
                "responses": {"200": _json("RunStatus", "The task"), **_errors(404)},
            }
        },
        "/agent/threads/{thread_id}": {
            "get": {
                "summary": "A conversation: its turns (tasks), with usage and cost",
                "operationId": "getThread",
                "parameters": [
                    {"name": "thread_id", "in": "path", "required": True,
                     "schema": {"type": "string"}}
                ],
                "responses": {"200": _json("ThreadView", "The thread"), **_errors(404)},
            }
        },
        "/agent/events/{task_id}": {
            "get": {
                "summary": "Server-Sent Events of status changes (resumable: Last-Event-ID)",
                "operationId": "streamEvents",
                "parameters": [
                    _TASK_ID,
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "Resume after this event id",
                     "schema": {"type": "string", "pattern": schemas.LAST_EVENT_ID_PATTERN}},
                    {"name": "last_event_id", "in": "query", "required": False,
                     "description": "Last-Event-ID, for clients that cannot set headers",
                     "schema": {"type": "string", "pattern": schemas.LAST_EVENT_ID_PATTERN}},
                ],
                "responses": {
                    "200": {
                        "description": "event: status (data: RunStatus JSON), then event: "
                                       "end; event: error (data: {code, message}) ends "
                                       "the stream when its API key is revoked",
                        "content": {"text/event-stream": {"schema": {
                            "type": "object",
                            "properties": {
                                "event": {"type": "string", "enum": ["status", "end", "error"]},
                                "data": {"type": "string"},
                                "id": {"type": "string"},
                            },
                        }}},
                    },
                    **_errors(404),
                    "422": _json("ErrorResponse", "Last-Event-ID is not an event id"),
                },
            }
        },
        "/agent/cancel/{task_id}": {
            "post": {
                "summary": "Cancel a task: stops before its next step",
                "operationId": "cancelTask",
                "parameters": [_TASK_ID],
                "responses": {"200": _json("RunStatus", "The task"), **_errors(404)},
            }
        },
        "/agent/tasks": {
            "get": {
                "summary": "Tasks, newest first",
                "operationId": "listTasks",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["queued", "running", "completed", "failed", "cancelled"],
                        },
                    },
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "offset", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": 1000000000}},
                ],
                "responses": {"200": _json("TaskList", "A page of tasks"), **_errors(422)},
            }
        },
        "/agent/agents": {
            "get": {
                "summary": "Configured agents and their live versions",
                "operationId": "listAgents",
                "responses": {"200": _json("AgentList", "Agents")},
            }
        },
        "/agent/usage": {
            "get": {
                "summary": "Spend and tokens per day, tenant and model; today's budgets",
                "operationId": "getUsage",
                "parameters": [
                    {"name": "since", "in": "query",
                     "schema": {"type": "string", "format": "date"}},
                    {"name": "until", "in": "query",
                     "schema": {"type": "string", "format": "date"}},
                ],
                "responses": {"200": _json("UsageReport", "Usage"), **_errors(422)},
            }
        },
        "/agent/providers": {
            "get": {
                "summary": "Models: provider, limits, circuit state, pause (shared by all workers)",
                "operationId": "listProviders",
                "responses": {"200": _json("ProviderList", "Models and their health")},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "operationId": "healthz",
                    "responses": {"200": _json("Health", "Alive")}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the store, Redis and the broker answer in time",
                "operationId": "readyz",
                "responses": {"200": _json("Health", "Ready"), "503": _json("Health", "Not ready")},
            }
        },
    }
    # Every /agent/* operation is behind the API-key check (app.auth): 401 without a
    # valid key (once any key exists, or always outside dev mode), 429 past the key's
    # request rate. The requirement says what this server does now: required, or
    # optional (the empty alternative) in dev mode before the first key.
    security: list[dict[str, list[str]]] = [{"apiKey": []}]
    if not key_required:
        security.append({})
    for path, operations in paths.items():
        if path.startswith("/agent/"):
            for operation in operations.values():
                operation["security"] = security
                responses = operation["responses"]
                responses.setdefault("401", _json("ErrorResponse", _AUTH_ERRORS[401]))
                responses.setdefault("429", _json("ErrorResponse", _AUTH_ERRORS[429]))
                responses.setdefault("503", _json("ErrorResponse", _AUTH_ERRORS[503]))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Celeriac", "version": __version__,
                 "description": "A production runtime for tool-calling LLM agents on Celery. "
                                "Send an API key as `Authorization: Bearer <key>` (`celeriac "
                                "keys create TENANT`); dev mode is open until the first "
                                "key exists."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": {"apiKey": _BEARER}},
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    context = web()
    key_required = (not context.services.settings.dev_mode
                    or context.authenticator.keys_exist())
    return jsonify(build_document(key_required=key_required))
