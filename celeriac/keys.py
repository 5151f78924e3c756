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
