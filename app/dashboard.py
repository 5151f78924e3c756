"""The live dashboard at ``/dashboard`` and the JSON it polls."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, send_from_directory
from flask.typing import ResponseReturnValue

from app.auth import current_tenant
from app.context import web
from celeriac.readmodels.dashboard_figures import dashboard_data

bp = Blueprint("dashboard", __name__)


@bp.get("/dashboard")
def page() -> ResponseReturnValue:
    return send_from_directory(current_app.root_path + "/static", "dashboard.html")


@bp.get("/agent/dashboard/data")
def data() -> ResponseReturnValue:
    services = web().services
    return jsonify(
        dashboard_data(
            db=services.db,
            catalog=services.catalog(),
            broker=services.broker_redis,
            breaker=services.breaker,
            limiter=services.limiter,
            keeper=services.keeper,
            budgets=services.budgets,
            tenant=current_tenant(),
        )
    )
