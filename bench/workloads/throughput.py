"""Throughput: N agent tasks of 3 LLM steps and 2 tool calls against the simulator at
200 ms, no provider limit; then (or first: the order alternates by repetition) the
same chain as bare Celery tasks, on the same pool and concurrency.

The simulator's script only chains tool calls turn after turn for an input with the
"[loop]" marker (it calls the calculator with "1 + 1" every turn); the bench agent has
max_steps = 3, so a task runs llm -> tool -> llm -> tool -> llm and stops there. Its
third LLM step still asks for a tool, so Celeriac records the run as failed with
``max_steps_exceeded``: the five steps are all executed and recorded like any others.

All N tasks are queued before the workers start (Celeriac's through the web app's
route, which also writes the store), so the workers never wait for work; workers of
both systems start together, and steps/s = completed steps / (last step's end - first
step's start).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.drivers import BareDriver, CeleriacDriver
from bench.harness import Stack
from bench.registry import Context, Metrics, workload
from bench.stats import rounded

LATENCY_MS = 200.0
INPUT = "[loop] bench task {i}"


def timeout_for(tasks: int) -> float:
    return 120 + tasks * 0.6


@workload("throughput")
def run(ctx: Context) -> Metrics:
    n = ctx.sizes.throughput_tasks
    with ctx.harness.stack("throughput", latency_ms=LATENCY_MS,
                           repetition=ctx.repetition) as stack:
        order = ["celeriac", "bare"] if ctx.repetition % 2 == 0 else ["bare", "celeriac"]
        found: dict[str, Metrics] = {}
        for system in order:
            stack.flush()
            ctx.log(f"throughput: {system}, {n} tasks")
            found[system] = (_celeriac if system == "celeriac" else _bare)(ctx, stack, n)
    celeriac, bare = found["celeriac"], found["bare"]
    return {
        "tasks": n,
        "steps_per_s": rounded(celeriac["steps_per_s"]),
        "bare_steps_per_s": rounded(bare["steps_per_s"]),
        "ratio_to_bare": rounded(celeriac["steps_per_s"] / bare["steps_per_s"], 3),
        "llm_steps_per_task": celeriac["llm_steps"],
        "tool_steps_per_task": celeriac["tool_steps"],
        "bare_llm_steps_per_task": bare["llm_steps"],
        "bare_tool_steps_per_task": bare["tool_steps"],
        "worker_cpu_ms_per_step": rounded(celeriac["cpu_ms_per_step"]),
        "bare_worker_cpu_ms_per_step": rounded(bare["cpu_ms_per_step"]),
        "run_statuses": celeriac["statuses"],
        "simulator_latency_ms": LATENCY_MS,
        "order": ",".join(order),
    }


def _celeriac(ctx: Context, stack: Stack, n: int) -> Metrics:
    driver = CeleriacDriver(stack)
    try:
        ids = [driver.submit(INPUT.format(i=i)) for i in range(n)]
        workers = stack.start_workers("tasks", count=ctx.workers, concurrency=ctx.concurrency,
                                      env=stack.env())
        cpu_at_start = sum(w.cpu_s() for w in workers)  # start-up is not a step's cost
        driver.wait_terminal(n, timeout_for(n), watch=workers)
        cpu_s = sum(w.cpu_s() for w in workers) - cpu_at_start
        runs = driver.runs(ids)
        for worker in workers:
            worker.stop()
    finally:
        driver.close()
    steps = [s for r in runs for s in r.steps if s.status == "completed"]
    starts = [s.started for s in steps if s.started is not None]
    ends = [s.finished for s in steps if s.finished is not None]
    statuses = Counter(f"{r.status}:{r.error_code}" if r.error_code else r.status for r in runs)
    return {
        "steps_per_s": len(steps) / (max(ends) - min(starts)),
        "cpu_ms_per_step": cpu_s * 1000 / len(steps),
        "llm_steps": _typical(sum(1 for s in r.steps if s.kind == "llm") for r in runs),
        "tool_steps": _typical(sum(1 for s in r.steps if s.kind == "tool") for r in runs),
        "statuses": ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())),
    }


def _bare(ctx: Context, stack: Stack, n: int) -> Metrics:
    celeriac = CeleriacDriver(stack)  # only to build the identical first request
    driver = BareDriver(stack)
    try:
        for i in range(n):
            driver.send(celeriac.first_request(INPUT.format(i=i)))
        workers = stack.start_workers("bench.bare", count=ctx.workers,
                                      concurrency=ctx.concurrency, env=stack.env())
        cpu_at_start = sum(w.cpu_s() for w in workers)
        driver.wait_done(n, timeout_for(n), watch=workers)
        cpu_s = sum(w.cpu_s() for w in workers) - cpu_at_start
        records = driver.records()
        for worker in workers:
            worker.stop()
    finally:
        driver.close()
        celeriac.close()
    timings = [t for r in records for t in r["timings"]]
    return {
        "steps_per_s": len(timings) / (max(t[2] for t in timings) - min(t[1] for t in timings)),
        "cpu_ms_per_step": cpu_s * 1000 / len(timings),
        "llm_steps": _typical(sum(1 for t in r["timings"] if t[0] == "llm") for r in records),
        "tool_steps": _typical(sum(1 for t in r["timings"] if t[0] == "tool") for r in records),
    }


def _typical(counts: Any) -> int:
    """The most common count (all tasks are alike; a stray one would show in statuses)."""
    return int(Counter(counts).most_common(1)[0][0])
