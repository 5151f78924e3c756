"""Overhead: what each step costs beyond its own call, on an idle system.

The simulator answers at once (latency 0); tasks run one at a time (the next is
submitted when the previous has finished), Celeriac's first, then the baseline's on
the same pool and concurrency. The chain is the throughput workload's
(llm -> tool -> llm -> tool -> llm).

Orchestration time of step k (k >= 2) = end of step k's call - end of step k-1's call
- step k's own call time (the provider's or the tool's ``latency_ms``). For Celeriac
the ends are the steps' ``finished_at`` in the store, stamped right after the call;
for the baseline, the same instants measured in the task. It counts recording step
k-1, enqueueing step k, the broker hop, claiming step k and building its request.
The first step is left out of both (it includes submission, measured by ``api``).
"""

from __future__ import annotations

from bench.drivers import BareDriver, CeleriacDriver, RunTiming
from bench.registry import Context, Metrics, workload
from bench.stats import orchestration_ms, percentile, rounded

INPUT = "[loop] overhead task {i}"
POLL_S = 0.005
TASK_TIMEOUT_S = 60.0


@workload("overhead")
def run(ctx: Context) -> Metrics:
    n = ctx.sizes.overhead_runs
    with ctx.harness.stack("overhead", latency_ms=0, repetition=ctx.repetition) as stack:
        ctx.log(f"overhead: celeriac, {n} tasks one at a time")
        driver = CeleriacDriver(stack)
        try:
            first = driver.first_request(INPUT.format(i=0))
            workers = stack.start_workers("tasks", count=ctx.workers,
                                          concurrency=ctx.concurrency, env=stack.env())
            ids = []
            for i in range(n):
                ids.append(driver.submit(INPUT.format(i=i)))
                driver.wait_terminal(i + 1, TASK_TIMEOUT_S, watch=workers, interval=POLL_S)
            runs = driver.runs(ids)
            for worker in workers:
                worker.stop()
        finally:
            driver.close()
        stack.flush()
        ctx.log(f"overhead: bare, {n} tasks one at a time")
        bare = BareDriver(stack)
        try:
            workers = stack.start_workers("bench.bare", count=ctx.workers,
                                          concurrency=ctx.concurrency, env=stack.env())
            for i in range(n):
                bare.send(first)
                bare.wait_done(i + 1, TASK_TIMEOUT_S, watch=workers, interval=POLL_S)
            records = bare.records()
            for worker in workers:
                worker.stop()
        finally:
            bare.close()
    celeriac_ms, celeriac_hops = _celeriac_samples(runs)
    bare_ms: list[float] = []
    bare_hops: list[float] = []
    for record in records:
        timings = record["timings"]
        bare_ms += orchestration_ms([t[2] for t in timings], [t[3] for t in timings])
        bare_hops += [(timings[k][1] - timings[k - 1][2]) * 1000 for k in range(1, len(timings))]
    p50, bare_p50 = percentile(celeriac_ms, 50), percentile(bare_ms, 50)
    return {
        "celeriac_step_ms_p50": rounded(p50, 3),
        "celeriac_step_ms_p99": rounded(percentile(celeriac_ms, 99), 3),
        "bare_celery_hop_ms_p50": rounded(bare_p50, 3),
        "bare_celery_hop_ms_p99": rounded(percentile(bare_ms, 99), 3),
        "ratio_p50": rounded(p50 / bare_p50, 3),
        # Only the gap between one step's end and the next one's start.
        "celeriac_gap_ms_p50": rounded(percentile(celeriac_hops, 50), 3),
        "bare_gap_ms_p50": rounded(percentile(bare_hops, 50), 3),
        "samples": len(celeriac_ms),
        "bare_samples": len(bare_ms),
        "tasks": n,
    }


def _celeriac_samples(runs: list[RunTiming]) -> tuple[list[float], list[float]]:
    orchestration: list[float] = []
    gaps: list[float] = []
    for run in runs:
        steps = [s for s in run.steps if s.status == "completed"]
        if any(s.finished is None or s.latency_ms is None for s in steps):
            continue
        ends = [s.finished or 0.0 for s in steps]
        orchestration += orchestration_ms(ends, [s.latency_ms or 0.0 for s in steps])
        gaps += [((steps[k].started or 0.0) - ends[k - 1]) * 1000 for k in range(1, len(steps))]
    return orchestration, gaps
