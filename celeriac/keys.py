"""Every Redis key Celeriac writes, with its lifetime next to it."""

from __future__ import annotations

PREFIX = "celeriac"

# Metric families, aggregated across every process and host. No TTL: Prometheus
# counters must never go backwards, so these live as long as the Redis data.
METRIC_COUNTERS = f"{PREFIX}:metrics:counter"
METRIC_HISTOGRAMS = f"{PREFIX}:metrics:histogram"
METRIC_GAUGES = f"{PREFIX}:metrics:gauge"


def metric_counter(name: str) -> str:
    return f"{METRIC_COUNTERS}:{name}"


def metric_histogram(name: str) -> str:
    return f"{METRIC_HISTOGRAMS}:{name}"


# Rate limiter state: a GCRA "theoretical arrival time" per model and unit, and a
# pause set from provider feedback. Both expire once they are in the past.
def rate_bucket(model: str, unit: str) -> str:
    return f"{PREFIX}:ratelimit:{model}:{unit}"


def provider_pause(model: str) -> str:
    return f"{PREFIX}:pause:{model}"


# Circuit breaker state per model: a hash, plus per-second outcome counts that
# expire after the breaker's window.
def breaker_state(model: str) -> str:
    return f"{PREFIX}:breaker:{model}"


def breaker_window(model: str) -> str:
    return f"{PREFIX}:breaker:{model}:window"


# Response cache entries; TTL set per agent (``cache_ttl_s``).
def response_cache(digest: str) -> str:
    return f"{PREFIX}:cache:{digest}"


# Budgets. Counters per calendar day (in the budget time zone), so a new day is a
# new key and no reset can overwrite spend. Kept three days, rebuilt from the
# ledger when missing. Reservations live until settled, or until the reaper
# settles them after ``reservation_ttl_s``.
BUDGET_COUNTER_TTL_S = 3 * 24 * 3600
BUDGET_RESERVATIONS = f"{PREFIX}:budget:reservations"


def budget_global(day: str) -> str:
    return f"{PREFIX}:budget:{day}:global"


def budget_tenant(day: str, tenant: str) -> str:
    return f"{PREFIX}:budget:{day}:tenant:{tenant}"


def budget_ready(day: str) -> str:
    return f"{PREFIX}:budget:{day}:ready"


def budget_settled(day: str) -> str:
    return f"{PREFIX}:budget:{day}:settled"


def budget_reservation(reservation_id: str) -> str:
    return f"{PREFIX}:budget:reservation:{reservation_id}"


def budget_rebuild_lock(day: str) -> str:
    return f"{PREFIX}:budget:{day}:rebuild-lock"


# The autoscaler's live worker count per host (expires if the autoscaler dies).
AUTOSCALER_WORKERS_PATTERN = f"{PREFIX}:autoscaler:*:workers"


def autoscaler_workers(host: str) -> str:
    return f"{PREFIX}:autoscaler:{host}:workers"
