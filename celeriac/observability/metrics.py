"""Metrics that are exact across processes and hosts.

Workers (prefork children, threads, several machines) add to Redis hashes; the
exporter process reads them and serves Prometheus text. Because the counts live in
Redis, not in the exporter, restarting the exporter neither loses nor doubles them.
Labels are bounded: agent names, model ids, tool names and outcomes, never a task
or tenant id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis import Redis

from celeriac import redis_keys as keys
from celeriac.observability.observer import RunReport, StepReport


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = Family("agent_requests_total", "Agent tasks finished", ("status", "intent"))
LATENCY = Family(
    "agent_latency_seconds",
    "Agent task latency from submission to end",
    ("intent",),
    (1, 5, 10, 30, 60, 120, 300),
)
STEPS = Family(
    "agent_steps_count", "Steps per agent task", ("intent",), (1, 3, 5, 10, 15, 20, 30)
)
COST = Family(
    "agent_cost_usd",
    "Cost per agent task in USD",
    ("intent",),
    (0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
TOOL_CALLS = Family("agent_tool_calls_total", "Tool calls", ("tool_name", "status"))
PROVIDER_CALLS = Family(
    "agent_provider_calls_total", "Provider calls by outcome", ("provider", "model", "outcome")
)
PROVIDER_TOKENS = Family(
    "agent_provider_tokens_total", "Tokens reported by providers", ("provider", "model", "kind")
)
PROVIDER_LATENCY = Family(
    "agent_provider_latency_seconds",
    "Provider call latency",
    ("provider", "model"),
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES = Family(
    "agent_retries_total", "Provider calls that failed and will be retried",
    ("provider", "model", "code"),
)
FALLBACKS = Family(
    "agent_fallbacks_total", "Calls moved to the next model of a chain", ("from_model", "reason")
)
RATE_LIMIT_WAITS = Family(
    "agent_rate_limit_waits_total", "Calls that waited for rate-limit capacity", ("model", "kind")
)
CACHE_HITS = Family("agent_cache_hits_total", "LLM steps served from the response cache",
                    ("model",))
DUPLICATES = Family(
    "agent_duplicate_deliveries_total",
    "Step messages delivered again after their step ran or while it ran (not re-executed)",
    ("kind", "outcome"),
)
CONTEXT_FOLDS = Family(
    "agent_context_folds_total",
    "Prompts over the context window, folded into a summary by a cheap model",
    ("model",),
)
REPLAYS = Family(
    "agent_journal_replays_total",
    "Steps recorded from their journal after their worker died: the provider answer or "
    "tool result a killed worker had received, recorded without a second call",
    ("kind",),
)
AUTOSCALER = Family(
    "agent_autoscaler_decisions_total", "Autoscaler decisions", ("action", "reason_kind")
)
REDIS_DATA_LOSSES = Family(
    "agent_redis_data_losses_total",
    "Times Redis was found empty while the system had history (celeriac.durability.epoch); it "
    "restarts from 0 with the rest of Redis, so a loss shows as a reset, then 1",
    (),
)
COUNTERS = (REQUESTS, TOOL_CALLS, PROVIDER_CALLS, PROVIDER_TOKENS, RETRIES, FALLBACKS,
            RATE_LIMIT_WAITS, CACHE_HITS, DUPLICATES, CONTEXT_FOLDS, REPLAYS,
            AUTOSCALER, REDIS_DATA_LOSSES)
_EVENTS: dict[str, tuple[Family, tuple[str, ...], dict[str, str]]] = {
    # event -> (family, label names taken from the event, fixed labels)
    "rate_limit_wait": (RATE_LIMIT_WAITS, ("model",), {"kind": "in_place"}),
    "rate_limit_requeue": (RATE_LIMIT_WAITS, ("model",), {"kind": "requeued"}),
    "fallback": (FALLBACKS, ("from_model", "reason"), {}),
    "duplicate_delivery": (DUPLICATES, ("kind", "outcome"), {}),
    "context_fold": (CONTEXT_FOLDS, ("model",), {}),
    "journal_replay": (REPLAYS, ("kind",), {}),
    "redis_data_lost": (REDIS_DATA_LOSSES, (), {}),
}
HISTOGRAMS = (LATENCY, STEPS, COST, PROVIDER_LATENCY)


def _labels(family: Family, values: Sequence[str]) -> str:
    return json.dumps(dict(zip(family.labels, values, strict=True)), sort_keys=True)


class RedisMetrics:
    """The Observer that records metrics into Redis, one pipeline per event."""

    def __init__(self, redis: Redis):
        self.redis = redis

    def _count(self, pipe: Any, family: Family, values: Sequence[str], by: float = 1) -> None:
        pipe.hincrbyfloat(keys.metric_counter(family.name), _labels(family, values), by)

    def _observe(self, pipe: Any, family: Family, values: Sequence[str], value: float) -> None:
        key, labels = keys.metric_histogram(family.name), _labels(family, values)
        for bound in family.buckets:
            if value <= bound:
                pipe.hincrby(key, f"{labels}|{bound}", 1)
        pipe.hincrby(key, f"{labels}|+Inf", 1)
        pipe.hincrbyfloat(key, f"{labels}|sum", value)

    def run_finished(self, report: RunReport) -> None:
        pipe = self.redis.pipeline(transaction=True)
        self._count(pipe, REQUESTS, (report.status, report.agent))
        self._observe(pipe, LATENCY, (report.agent,), report.latency_s)
        self._observe(pipe, STEPS, (report.agent,), report.total_steps)
        self._observe(pipe, COST, (report.agent,), report.cost_nanos / 1e9)
        pipe.execute()

    def count(self, event: str, labels: dict[str, str]) -> None:
        family, names, fixed = _EVENTS[event]
        values = {**fixed, **{n: labels[n] for n in names}}
        pipe = self.redis.pipeline(transaction=True)
        self._count(pipe, family, tuple(values[n] for n in family.labels))
        pipe.execute()

    def step_finished(self, report: StepReport) -> None:
        pipe = self.redis.pipeline(transaction=True)
        if report.kind == "tool":
            self._count(pipe, TOOL_CALLS, (report.name, report.status))
        elif report.status == "cached":
            self._count(pipe, CACHE_HITS, (report.name,))
        elif report.status == "retrying":
            provider = report.provider or "unknown"
            self._count(pipe, RETRIES, (provider, report.name, report.error_code or "unknown"))
            self._count(pipe, PROVIDER_CALLS, (provider, report.name, "error"))
        else:
            provider = report.provider or "unknown"
            self._count(pipe, PROVIDER_CALLS, (provider, report.name, report.status))
            if report.status == "completed":
                self._count(pipe, PROVIDER_TOKENS, (provider, report.name, "input"),
                            report.input_tokens)
                self._count(pipe, PROVIDER_TOKENS, (provider, report.name, "output"),
                            report.output_tokens)
                self._observe(pipe, PROVIDER_LATENCY, (provider, report.name),
                              report.latency_ms / 1000)
        pipe.execute()


class RedisCollector:
    """A prometheus_client collector that reads what RedisMetrics wrote, plus live
    gauges (queue depth, circuits, budgets ...) from a callable, read at scrape time."""

    def __init__(self, redis: Redis, gauges: Callable[[], Iterable[Metric]] | None = None):
        self.redis = redis
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for family in COUNTERS:
            raw = self.redis.hgetall(keys.metric_counter(family.name))
            base = family.name.removesuffix("_total")
            metric = CounterMetricFamily(base, family.help, labels=list(family.labels))
            for labels_json, value in sorted(raw.items()):
                labels = json.loads(labels_json)
                metric.add_metric([labels[n] for n in family.labels], float(value))
            if not family.labels and not raw:  # one series, shown from zero
                metric.add_metric([], 0.0)
            yield metric
        for family in HISTOGRAMS:
            yield self._histogram(family)
        if self.gauges is not None:
            yield from self.gauges()

    def _histogram(self, family: Family) -> Metric:
        raw = self.redis.hgetall(keys.metric_histogram(family.name))
        series: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            field_s = field.decode() if isinstance(field, bytes) else field
            labels_json, _, part = field_s.rpartition("|")
            series.setdefault(labels_json, {})[part] = float(value)
        metric = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
        for labels_json, parts in sorted(series.items()):
            labels = json.loads(labels_json)
            buckets = [(str(b), parts.get(str(b), 0.0)) for b in family.buckets]
            buckets.append(("+Inf", parts.get("+Inf", 0.0)))
            metric.add_metric(
                [labels[n] for n in family.labels], buckets, sum_value=parts.get("sum", 0.0)
            )
        return metric
