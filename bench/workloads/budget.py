"""Budget: tasks submitted at once against a $1 daily budget (``CELERIAC_BUDGETS``:
``daily_usd`` and ``tenant_daily_usd`` both 1.0), sized so that unbudgeted they would
cost several times the cap: each asks an arithmetic question padded with ~8,000
characters of text (llm -> calculator -> llm on claude-sonnet-4, about 2,000 input
tokens per call at $3/M).

Two worker processes are started first, then every task is submitted through the
web route as fast as it takes them: ``refused`` = submissions answered 429 (a daily
cap already spent), ``budget_failed`` = runs that ended with a budget error code.
provider_bill_usd = every 200 in the simulator's log priced with config/prices.toml
(what the provider would charge); ledger_usd = sum of ``ledger.cost_nanos``;
overspend_usd = max(0, bill - cap).
"""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import func, select

from bench.drivers import CeleriacDriver
from bench.harness import BENCH_AGENT
from bench.processes import BenchError
from bench.registry import Context, Metrics, workload
from bench.stats import rounded
from celeriac.accounting.pricing import cost_nanos
from celeriac.catalog import load_catalog
from celeriac.gateway.providers.base import Usage
from celeriac.store.schema import LedgerEntry

LATENCY_MS = 200.0
CAP_USD = 1.0
PADDING = ("The quarterly report lists revenue, costs and forecasts for every region "
           "of the company in considerable detail. ") * 75  # ~8,000 characters
INPUT = "What is {a} * {b}? Context (task {i}): " + PADDING
NANOS_PER_USD = 1_000_000_000


@workload("budget", max_repeats=1)
def run(ctx: Context) -> Metrics:
    n = ctx.sizes.budget_tasks
    budgets = json.dumps({"daily_usd": CAP_USD, "tenant_daily_usd": CAP_USD})
    with ctx.harness.stack("budget", latency_ms=LATENCY_MS,
                           repetition=ctx.repetition) as stack:
        # Workers and the web route (which refuses at submission) alike.
        stack.extra_env["CELERIAC_BUDGETS"] = budgets
        workers = stack.start_workers("tasks", count=2, concurrency=ctx.concurrency,
                                      env=stack.env())
        driver = CeleriacDriver(stack)
        try:
            ctx.log(f"budget: {n} tasks against a ${CAP_USD:g} daily budget")
            ids: list[str] = []
            refused = 0
            for i in range(n):
                body = {"input": INPUT.format(a=11 + i, b=3 + i % 17, i=i),
                        "agent": BENCH_AGENT}
                response = driver.client.post("/agent/run", json=body)
                if response.status_code == 202:
                    ids.append(response.get_json()["task_id"])
                elif response.status_code == 429:
                    refused += 1
                else:
                    raise BenchError(f"POST /agent/run: {response.status_code} "
                                     f"{response.get_data()!r}")
            driver.wait_terminal(len(ids), timeout=180 + n * 1.0, watch=workers)
            runs = driver.runs(ids)
            with driver.db.reader() as s:
                ledger_nanos = int(s.scalar(select(func.coalesce(
                    func.sum(LedgerEntry.cost_nanos), 0))) or 0)
            for worker in workers:
                worker.stop()
        finally:
            driver.close()
        log = stack.simulator_log()
        catalog = load_catalog(stack.config_dir)
    bill_nanos = sum(
        cost_nanos(catalog.model(e["model"]).price,
                   Usage(input_tokens=int(e.get("input_tokens") or 0),
                         output_tokens=int(e.get("output_tokens") or 0)))
        for e in log if e.get("status") == 200
    )
    statuses = Counter(f"{r.status}:{r.error_code}" if r.error_code else r.status for r in runs)
    bill = bill_nanos / NANOS_PER_USD
    paid_calls = sum(1 for e in log if e.get("status") == 200)
    return {
        "tasks": n,
        "cap_usd": CAP_USD,
        "accepted": len(ids),
        "refused": refused,
        "completed": sum(1 for r in runs if r.status == "completed"),
        "budget_failed": sum(1 for r in runs if (r.error_code or "").startswith("budget")),
        "provider_calls": paid_calls,
        "provider_bill_usd": rounded(bill, 4),
        "ledger_usd": rounded(ledger_nanos / NANOS_PER_USD, 4),
        "overspend_usd": rounded(max(0.0, bill - CAP_USD), 4),
        "usd_per_call": rounded(bill / paid_calls, 5) if paid_calls else 0.0,
        "run_statuses": ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())),
        "simulator_latency_ms": LATENCY_MS,
    }
