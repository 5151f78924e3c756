"""The JSON API under /agent."""

from __future__ import annotations

import contextlib
import re
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from app.auth import current_tenant
from app.context import web
from app.errors import validation_error
from app.schemas import IDEMPOTENCY_KEY_PATTERN, RunRequest
from celeriac import strict_json
from celeriac.accounting.ledger import usage_report
from celeriac.accounting.pricing import usd_to_nanos
from celeriac.clock import utcnow
from celeriac.errors import BudgetSpent, CeleriacError, InvalidRequest
from celeriac.execution.submission import Submission, submit
from celeriac.readmodels.dashboard_figures import budget_summary
from celeriac.readmodels.documents import list_runs, load_run_document, load_thread_document
from celeriac.webhooks import UnresolvableHost, check_url

bp = Blueprint("api", __name__, url_prefix="/agent")

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise CeleriacError(
            "Content-Type must be application/json", code="unsupported_media_type"
        )
    raw = request.get_data(cache=False)
    limit = web().services.settings.max_body_bytes
    if len(raw) > limit:
        raise CeleriacError(f"the body is larger than {limit} bytes", code="payload_too_large")
    body = strict_json.loads(raw)  # NaN, 1e400, NUL, deep nesting... refused, field named
    if not isinstance(body, dict):
        raise CeleriacError("the body must be a JSON object", code="malformed_json")
    return body


@bp.post("/run")
def run() -> ResponseReturnValue:
    body = json_body()
    try:
        req = RunRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    services = web().services
    if len(req.input) > services.settings.max_input_chars:
        raise InvalidRequest(
            f"input is longer than {services.settings.max_input_chars} characters",
            field="input",
        )
    refuse_when_daily_budget_spent(current_tenant())
    if req.webhook_url is not None:
        check_webhook_url(req.webhook_url)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters",
                             field="Idempotency-Key")
    accepted = submit(
        services.db,
        services.catalog(),
        services.providers,
        Submission(
            input=req.input,
            agent=req.agent,
            model=req.model,
            priority=req.priority,
            budget_usd=float(req.budget_usd) if req.budget_usd is not None else None,
            webhook_url=req.webhook_url,
            metadata=req.metadata,
            tenant=current_tenant(),
            idempotency_key=key,
            thread_id=req.thread_id,
        ),
        max_budget_usd=services.budgets.max_task_usd,
    )
    if accepted.created:
        try:
            web().queue.send_llm_step(
                accepted.first_step_id, queue=accepted.priority.queue, level=accepted.priority.level
            )
        except Exception as exc:
            # Not accepted after all: say so rather than leave a task that never runs.
            services.loop.fail_step(
                accepted.first_step_id,
                CeleriacError(f"broker unavailable: {type(exc).__name__}", code="enqueue_failed"),
            )
            raise CeleriacError("the broker is unavailable; retry later", code="enqueue_failed")\
                from None
    status = "queued"
    if not accepted.created:  # an earlier task with this Idempotency-Key: as it is now
        status = str(load_run_document(services.db, accepted.run_id)["status"])
    status_url = url_for("api.status", task_id=accepted.run_id)
    thread_id = str(accepted.thread_id)
    response = jsonify(
        {
            "task_id": accepted.run_id,
            "status": status,
            "status_url": status_url,
            "thread_id": thread_id,
            "thread_url": url_for("api.thread", thread_id=thread_id),
        }
    )
    response.status_code = 202 if accepted.created else 200
    response.headers["Location"] = status_url
    return response


@bp.get("/status/<task_id>")
def status(task_id: str) -> ResponseReturnValue:
    return jsonify(load_run_document(web().services.db, task_id, tenant=current_tenant()))


@bp.get("/threads/<thread_id>")
def thread(thread_id: str) -> ResponseReturnValue:
    return jsonify(load_thread_document(web().services.db, thread_id, tenant=current_tenant()))


@bp.post("/cancel/<task_id>")
def cancel(task_id: str) -> ResponseReturnValue:
    services = web().services
    load_run_document(services.db, task_id, tenant=current_tenant())  # 404 for unknown ids
    open_steps = services.loop.cancel(task_id)
    web().queue.revoke(open_steps)
    return jsonify(load_run_document(services.db, task_id, tenant=current_tenant()))


@bp.get("/tasks")
def tasks() -> ResponseReturnValue:
    status_filter = request.args.get("status")
    if status_filter is not None and status_filter not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    limit = _int_arg("limit", 20, 1, 100)
    offset = _int_arg("offset", 0, 0, 10**9)
    items, total = list_runs(
        web().services.db, tenant=current_tenant(), status=status_filter, limit=limit, offset=offset
    )
    return jsonify({"items": items, "total": total, "limit": limit, "offset": offset})


@bp.get("/agents")
def agents() -> ResponseReturnValue:
    catalog = web().services.catalog()
    return jsonify(
        {
            "agents": [
                {
                    "name": a.name,
                    "description": a.description,
                    "pinned": a.pinned,
                    "versions": [
                        {
                            "version": v.version,
                            "weight": v.weight,
                            "model": v.model,
                            "fallbacks": list(v.fallbacks),
                            "tools": list(v.tools),
                            "max_steps": v.max_steps,
                        }
                        for v in a.versions
                    ],
                }
                for a in catalog.agents.values()
            ]
        }
    )


@bp.get("/usage")
def usage() -> ResponseReturnValue:
    """Spend and tokens per day, tenant and model, from the ledger; and today's caps."""
    services = web().services
    budgets = services.budgets
    today = budgets.day(utcnow())
    until = _date_arg("until", today)
    week_before = until - timedelta(days=6) if until > date.min + timedelta(days=6) else date.min
    since = _date_arg("since", week_before)
    report = usage_report(services.db, since=since.isoformat(), until=until.isoformat(),
                          tenant=current_tenant())
    report["budgets"] = budget_summary(services.keeper, budgets, current_tenant(), utcnow())
    return jsonify(report)


def _date_arg(name: str, default: date) -> date:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        # fromisoformat alone also takes "20240101" and "2024-W01-1".
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    raise InvalidRequest(f"{name} must be a date, YYYY-MM-DD", field=name)


def check_webhook_url(url: str) -> None:
    """Refuse, before accepting the task, a webhook we would never send: no signing
    secret configured, or a URL that resolves to a private address."""
    services = web().services
    if services.settings.webhook_secret is None:
        raise InvalidRequest(
            "webhooks are not configured on this server (CELERIAC_WEBHOOK_SECRET)",
            field="webhook_url",
        )
    # An unresolvable host may resolve later; delivery checks again, every time.
    with contextlib.suppress(UnresolvableHost):
        check_url(url, services.webhook_policy)


def refuse_when_daily_budget_spent(tenant: str) -> None:
    """New work is refused with 429 while a daily cap is used up, until it resets."""
    services = web().services
    budgets = services.budgets
    now = utcnow()
    day = budgets.day(now).isoformat()
    for name, state, cap in (
        ("global daily", services.keeper.day_state(day), budgets.daily_usd),
        (f"tenant {tenant!r} daily", services.keeper.day_state(day, tenant),
         budgets.tenant_cap(tenant)),
    ):
        if cap > 0 and state["spent"] + state["reserved"] >= usd_to_nanos(cap):
            reset = budgets.next_reset(now)
            raise BudgetSpent(
                f"the {name} budget of ${cap:.2f} is spent; it resets at {reset.isoformat()}",
                retry_after_s=max(1, int((reset - now).total_seconds())),
            )


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() also takes "١٢", " 12 " and "1_2", and raises past
    # 4,300 digits.
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise InvalidRequest(f"{name} must be an integer", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response
