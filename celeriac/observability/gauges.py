"""Live gauges, read at scrape time from the store and Redis: what is running now,
queue depth and oldest message age, circuit states, budget left today."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from celeriac import redis_keys as keys
from celeriac.clock import utcnow
from celeriac.gateway.limits.breaker import STATE_VALUES
from celeriac.observability.queue_depth import queue_stats
from celeriac.readmodels.dashboard_figures import budget_summary
from celeriac.services import Services
from celeriac.store import Run


def live_gauges(services: Services) -> Iterator[Metric]:
    with services.db.reader() as s:
        running = s.scalar(select(func.count()).where(Run.status == "running")) or 0
        queued = s.scalar(select(func.count()).where(Run.status == "queued")) or 0
    yield GaugeMetricFamily("active_agents", "Agent tasks running now", value=running)
    yield GaugeMetricFamily("celeriac_tasks_queued", "Agent tasks accepted, not started",
                            value=queued)
    if services.broker_redis is not None:
        depth = GaugeMetricFamily("celeriac_queue_depth", "Steps waiting per queue",
                                  labels=["queue"])
        age = GaugeMetricFamily("celeriac_queue_oldest_age_seconds",
                                "Age of the oldest waiting step per queue", labels=["queue"])
        for stat in queue_stats(services.broker_redis):
            depth.add_metric([stat.name], stat.depth)
            age.add_metric([stat.name], stat.oldest_age_s or 0.0)
        yield depth
        yield age
    circuit = GaugeMetricFamily("celeriac_circuit_state",
                                "Circuit per model: 0 closed, 1 half-open, 2 open",
                                labels=["provider", "model"])
    paused = GaugeMetricFamily("celeriac_provider_paused_seconds",
                               "Seconds a model stays paused by provider feedback",
                               labels=["provider", "model"])
    for model in services.catalog().models.values():
        view = services.breaker.view(model.id)
        circuit.add_metric([model.provider, model.id], STATE_VALUES.get(view.state, 0))
        paused.add_metric([model.provider, model.id], services.limiter.paused_for(model.id))
    yield circuit
    yield paused
    workers = GaugeMetricFamily("agent_autoscaler_workers",
                                "Worker processes the autoscaler runs, per host", labels=["host"])
    for key in services.redis.scan_iter(keys.AUTOSCALER_WORKERS_PATTERN):
        value = services.redis.get(key)
        if value is not None:
            workers.add_metric([str(key).split(":")[2]], float(value))
    yield workers
    budgets = budget_summary(services.keeper, services.budgets, "default", utcnow())
    remaining = GaugeMetricFamily("celeriac_budget_remaining_usd",
                                  "Budget left today (capped budgets only)", labels=["budget"])
    limit = GaugeMetricFamily("celeriac_budget_limit_usd", "Today's cap", labels=["budget"])
    glob = budgets["global"]
    if glob["cap_usd"] is not None:
        remaining.add_metric(["global_daily"], glob["remaining_usd"] or 0.0)
        limit.add_metric(["global_daily"], glob["cap_usd"])
    yield remaining
    yield limit
