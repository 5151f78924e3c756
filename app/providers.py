"""``GET /agent/providers``: every model's provider, limits, circuit, pause and pace, as
every worker sees them (the state lives in Redis)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from app.context import web

bp = Blueprint("providers", __name__, url_prefix="/agent")


@bp.get("/providers")
def providers() -> ResponseReturnValue:
    services = web().services
    catalog = services.catalog()
    models = []
    for model in catalog.models.values():
        circuit = services.breaker.view(model.id)
        limits = services.limits.for_model(model.id)
        models.append(
            {
                "model": model.id,
                "provider": model.provider,
                "configured": services.providers.configured(model.provider),
                "priced": model.price is not None,
                "limits": {"rpm": limits.rpm, "tpm": limits.tpm},
                "circuit": {
                    "state": circuit.state,
                    "consecutive_failures": circuit.consecutive_failures,
                    "opened_at": circuit.opened_at,
                },
                "paused_for_s": round(services.limiter.paused_for(model.id), 3),
                # 1.0, or less while provider feedback has the model slowed down.
                "pace_factor": round(services.limiter.pace_factor(model.id), 3),
            }
        )
    return jsonify({"simulated": services.settings.simulated, "models": models})
