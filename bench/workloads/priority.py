"""Priority: with a backlog of low-priority tasks queued, high-priority tasks submitted
afterwards should start at once.

One worker with a few threads runs against the simulator at 200 ms. The backlog of
low tasks is submitted as fast as the web route takes them, far faster than the
worker drains it; then the high tasks are submitted one every 100 ms. Each task here
is a single LLM step (the script echoes inputs without arithmetic), so the backlog is
exactly one queued step per low task. Start delay = ``runs.started_at -
runs.created_at`` (submission to the claim of its first step); the workload waits
until every task has started.
"""

from __future__ import annotations

import time

from bench.drivers import CeleriacDriver, RunTiming
from bench.registry import Context, Metrics, workload
from bench.stats import percentile, rounded

LATENCY_MS = 200.0
CONCURRENCY = 8
HIGH_EVERY_S = 0.1


@workload("priority")
def run(ctx: Context) -> Metrics:
    backlog, highs = ctx.sizes.priority_backlog, ctx.sizes.priority_highs
    with ctx.harness.stack("priority", latency_ms=LATENCY_MS,
                           repetition=ctx.repetition) as stack:
        driver = CeleriacDriver(stack)
        try:
            (worker,) = stack.start_workers("tasks", count=1, concurrency=CONCURRENCY,
                                            env=stack.env())
            ctx.log(f"priority: {backlog} low tasks, then {highs} high ones")
            low_ids = [driver.submit(f"low task number {i}", priority="low")
                       for i in range(backlog)]
            queued_at_first_high = backlog - driver.count(("running", *_DONE))
            high_ids = []
            for i in range(highs):
                started = time.monotonic()
                high_ids.append(driver.submit(f"high task number {i}", priority="high"))
                time.sleep(max(0.0, HIGH_EVERY_S - (time.monotonic() - started)))
            driver.wait_started(backlog + highs, timeout=120 + backlog * 0.5, watch=[worker])
            runs = {r.id: r for r in driver.runs(low_ids + high_ids)}
        finally:
            driver.close()
    high_ms = [_start_ms(runs[i]) for i in high_ids]
    low_ms = [_start_ms(runs[i]) for i in low_ids]
    return {
        "backlog": backlog,
        "high_tasks": highs,
        "high_start_ms_p50": rounded(percentile(high_ms, 50), 1),
        "high_start_ms_max": rounded(max(high_ms), 1),
        "low_start_ms_p50": rounded(percentile(low_ms, 50), 1),
        "low_start_ms_max": rounded(max(low_ms), 1),
        "lows_waiting_at_first_high": queued_at_first_high,
        "worker_concurrency": CONCURRENCY,
    }


_DONE = ("completed", "failed", "cancelled")


def _start_ms(run: RunTiming) -> float:
    if run.started is None:
        return float("nan")
    return (run.started - run.created) * 1000
