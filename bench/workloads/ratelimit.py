"""Rate limit: a backlog of agent tasks against a simulator that enforces an RPM limit
(``--rpm``: a rolling 60 s window, 429 past it), with Celeriac's global limiter set to
the same RPM for the bench model (``CELERIAC_LIMITS``); once per worker-process count.

Every task is the throughput workload's "[loop]" task: llm -> tool -> llm -> tool ->
llm with the bench agent (max_steps = 3), so 3 LLM calls per task. All tasks are
queued before the workers start. From the simulator's own request log:

- achieved RPM = (accepted calls - 1) / (last accepted call - first one) x 60, i.e.
  while the backlog lasts;
- over_limit_requests = max over every rolling window (one starting at each accepted
  call) of accepted calls in it minus the limit scaled to the window, floored at 0.
  The simulator never accepts more than its limit per rolling 60 s, so over 60 s this
  is 0 by construction; ``over_limit_attempts`` counts every request that reached the
  simulator (429s included): what the provider would have seen over its limit;
- provider_429 = requests the simulator answered 429 (its RPM window refused them);
- lag = arrival - slot per call: Celeriac stamps the slot its limiter granted on each
  call (``x-celeriac-slot``) and the simulator logs it, so the log shows whether an
  excess came from the limiter (``peak_granted_in_window``) or from calls reaching
  the provider late and bunched (``peak_attempts_in_window`` above it). The log of
  each worker count is kept in the scratch directory (``--keep``).

Each worker count gets at most 30 s + 1.4 x the ideal backlog time; past that the
workers are stopped and ``unfinished_tasks`` says how many runs had not ended (seen
at full size: simulator 429s pause the model, then steps re-queue with 30 s
countdowns and the backlog stalls for minutes). Between worker counts the Redis
database is flushed (queue, limiter state) and the simulator reset (log, RPM
window). Quick and tiny runs are shorter than 60 s, so their window is scaled down
(``window_s``) with the limit scaled alike.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence

from bench.drivers import CeleriacDriver
from bench.harness import BENCH_MODEL, Stack
from bench.processes import BenchError
from bench.registry import Context, Metrics, workload
from bench.stats import percentile, rounded
from celeriac.gateway.limits.config import load_limits
from celeriac.gateway.limits.ratelimit import paced_rpm
from celeriac.store.schema import TERMINAL_STATUSES

LATENCY_MS = 200.0
INPUT = "[loop] rate limit task {i}"
LLM_CALLS_PER_TASK = 3


@workload("rate_limit", max_repeats=1)
def run(ctx: Context) -> Metrics:
    rpm, agents = ctx.sizes.rate_limit_rpm, ctx.sizes.rate_limit_agents
    window_s = ctx.sizes.rate_limit_window_s
    by_workers: dict[str, Metrics] = {}
    with ctx.harness.stack("rate_limit", latency_ms=LATENCY_MS, repetition=ctx.repetition,
                           simulator_args=["--rpm", str(rpm)]) as stack:
        for count in ctx.sizes.rate_limit_workers:
            stack.flush()
            stack.reset_simulator()
            ctx.log(f"rate_limit: {agents} tasks, limit {rpm} RPM, {count} worker(s)")
            by_workers[str(count)] = _one(ctx, stack, rpm, agents, count, window_s)
    headline_key = "2" if "2" in by_workers else next(iter(by_workers))
    headline = by_workers[headline_key]
    rates = [m["achieved_rpm"] for m in by_workers.values()]
    mean = sum(rates) / len(rates)
    return {
        "limit_rpm": rpm,
        "paced_rpm": paced_rpm(load_limits(ctx.harness.config_dir / "limits.toml"), rpm),
        "tasks": agents,
        "workers": int(headline_key),
        "calls": headline["calls"],
        "achieved_rpm": headline["achieved_rpm"],
        "utilization": headline["utilization"],
        "over_limit_requests": max(m["over_limit_requests"] for m in by_workers.values()),
        "over_limit_attempts": max(m["over_limit_attempts"] for m in by_workers.values()),
        "provider_429": headline["provider_429"],
        "unfinished_tasks": headline["unfinished_tasks"],
        "unfinished_tasks_all_runs": sum(m["unfinished_tasks"] for m in by_workers.values()),
        "provider_429_all_runs": sum(m["provider_429"] for m in by_workers.values()),
        "utilization_all_runs_min": min(m["utilization"] for m in by_workers.values()),
        "peak_attempts_in_window": max(m["peak_attempts_in_window"]
                                       for m in by_workers.values()),
        "lag_ms_p99": headline["lag_ms_p99"],
        "lag_ms_max": max(m["lag_ms_max"] for m in by_workers.values()),
        "spread_across_workers": rounded((max(rates) - min(rates)) / mean, 3) if mean else 0.0,
        "window_s": window_s,
        "simulator_latency_ms": LATENCY_MS,
        "by_workers": by_workers,
    }


def _one(ctx: Context, stack: Stack, rpm: int, agents: int, count: int,
         window_s: float) -> Metrics:
    driver = CeleriacDriver(stack)
    try:
        before = driver.count()
        ids = [driver.submit(INPUT.format(i=i)) for i in range(agents)]
        env = stack.env(CELERIAC_LIMITS=json.dumps({BENCH_MODEL: {"rpm": rpm}}))
        workers = stack.start_workers("tasks", count=count, concurrency=ctx.concurrency,
                                      env=env)
        expected_s = agents * LLM_CALLS_PER_TASK / rpm * 60
        try:
            driver.wait_terminal(before + agents, timeout=30 + expected_s * 1.4, watch=workers)
        except BenchError:
            # Measured as far as it got (the bench must end): the unfinished are reported.
            if any(not w.alive() for w in workers):
                raise
            ctx.log(f"rate_limit: {count} worker(s): deadline passed with "
                    f"{before + agents - driver.count()} tasks unfinished")
        runs = driver.runs(ids)
        for worker in workers:
            worker.stop()
    finally:
        driver.close()
    log = [e for e in stack.simulator_log() if e.get("model") == BENCH_MODEL]
    # Kept for later analysis (``--keep`` keeps the scratch directory).
    (stack.log_dir / f"rate_limit-{count}w-simulator-log.json").write_text(json.dumps(log))
    accepted = sorted(e["ts"] for e in log if e.get("status") == 200)
    attempted = sorted(e["ts"] for e in log)
    # Grant -> arrival: each call carries its limiter slot (x-celeriac-slot).
    slotted = [e for e in log if e.get("slot")]
    lags_ms = [(e["ts"] - e["slot"]) * 1000 for e in slotted]
    granted = sorted(e["slot"] for e in slotted)
    span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
    achieved = (len(accepted) - 1) / span * 60 if span > 0 else 0.0
    allowed = rpm * window_s / 60
    statuses = Counter(f"{r.status}:{r.error_code}" if r.error_code else r.status for r in runs)
    return {
        "calls": len(accepted),
        "llm_calls_per_task": rounded(len(accepted) / agents, 2),
        "achieved_rpm": rounded(achieved, 1),
        "utilization": rounded(achieved / rpm, 3),
        "over_limit_requests": _over(accepted, window_s, allowed),
        "over_limit_attempts": _over(attempted, window_s, allowed),
        "provider_429": sum(1 for e in log if e.get("status") == 429),
        "granted_over_limit": _over(granted, window_s, allowed),
        "peak_granted_in_window": _peak(granted, window_s),
        "peak_attempts_in_window": _peak(attempted, window_s),
        "lag_ms_p50": rounded(percentile(lags_ms, 50), 1),
        "lag_ms_p99": rounded(percentile(lags_ms, 99), 1),
        "lag_ms_max": rounded(max(lags_ms, default=math.nan), 1),
        "lag_ms_min": rounded(min(lags_ms, default=math.nan), 1),
        "backlog_s": rounded(span, 1),
        "unfinished_tasks": sum(1 for r in runs if r.status not in TERMINAL_STATUSES),
        "run_statuses": ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())),
    }


def _over(times: Sequence[float], window_s: float, allowed: float) -> int:
    """Max over windows [t, t + window_s), t each request's time, of requests in it
    minus ``allowed``, floored at 0."""
    return max(0, math.ceil(_peak(times, window_s) - allowed))


def _peak(times: Sequence[float], window_s: float) -> int:
    """Max over windows [t, t + window_s), t each sorted time, of the times in it."""
    worst, end = 0, 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] < t + window_s:
            end += 1
        worst = max(worst, end - start)
    return worst
