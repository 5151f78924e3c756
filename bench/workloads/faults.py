"""Faults: agent tasks whose provider calls fail at random (the simulator injects a
429, 500, 503 or 529 into a share ``fault_rate`` of them, per the task's ``metadata:
{"simulator": {"fault_rate": ...}}``, for every model), with the default agent (its
retries and its fallback chain sonnet -> haiku -> gpt-4o-mini).

Each task asks an arithmetic question: llm -> calculator -> llm when nothing fails.
completed_ratio = runs completed / tasks; attempts_per_success = every provider
request in the simulator's log / those answered 200. Two worker processes; all
tasks are queued before they start.
"""

from __future__ import annotations

from collections import Counter

from bench.drivers import CeleriacDriver
from bench.registry import Context, Metrics, workload
from bench.stats import rounded

LATENCY_MS = 50.0
FAULT_RATE = 0.3
AGENT = "default"
INPUT = "What is {a} * {b}? (fault task {i})"


@workload("faults", max_repeats=1)
def run(ctx: Context) -> Metrics:
    n = ctx.sizes.fault_tasks
    meta = {"simulator": {"fault_rate": FAULT_RATE}}
    with ctx.harness.stack("faults", latency_ms=LATENCY_MS,
                           repetition=ctx.repetition) as stack:
        driver = CeleriacDriver(stack)
        try:
            ids = [driver.submit(INPUT.format(a=12 + i, b=7 + i % 13, i=i), metadata=meta,
                                 agent=AGENT) for i in range(n)]
            ctx.log(f"faults: {n} tasks at fault rate {FAULT_RATE}")
            workers = stack.start_workers("tasks", count=2, concurrency=ctx.concurrency,
                                          env=stack.env())
            driver.wait_terminal(n, timeout=180 + n * 1.5, watch=workers)
            runs = driver.runs(ids)
            for worker in workers:
                worker.stop()
        finally:
            driver.close()
        log = stack.simulator_log()
    ok = [e for e in log if e.get("status") == 200]
    statuses = Counter(f"{r.status}:{r.error_code}" if r.error_code else r.status for r in runs)
    answers = Counter(str(e.get("status")) for e in log)
    models = Counter(str(e.get("model")) for e in ok)
    completed = sum(1 for r in runs if r.status == "completed")
    return {
        "fault_rate": FAULT_RATE,
        "tasks": n,
        "completed": completed,
        "completed_ratio": rounded(completed / n, 3),
        "attempts": len(log),
        "successful_calls": len(ok),
        "attempts_per_success": rounded(len(log) / len(ok), 3) if ok else float("nan"),
        "injected_faults": sum(1 for e in log if e.get("fault") == "random"),
        "llm_calls_per_completed_task": rounded(len(ok) / completed, 2) if completed else 0,
        "provider_answers": ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())),
        "served_by": ", ".join(f"{k} x{v}" for k, v in sorted(models.items())),
        "run_statuses": ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())),
        "simulator_latency_ms": LATENCY_MS,
    }
