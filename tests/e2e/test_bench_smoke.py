"""`make bench` works: the bench at its smallest size starts its services, runs every
workload, stops everything it started, and writes valid results (to a temporary
directory, so the committed bench/results.json is left alone)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

from tests.support.services import PROJECT_DIR

REQUIRED = {
    "throughput": ("tasks", "steps_per_s", "bare_steps_per_s", "ratio_to_bare"),
    "overhead": ("celeriac_step_ms_p50", "celeriac_step_ms_p99", "bare_celery_hop_ms_p50",
                 "ratio_p50"),
    "api": ("rps", "submit_ms_p50", "submit_ms_p99", "errors"),
    "memory": ("in_flight", "worker_rss_mb", "redis_growth_mb"),
    "priority": ("backlog", "high_start_ms_p50", "low_start_ms_p50"),
    "rate_limit": ("limit_rpm", "achieved_rpm", "utilization", "over_limit_requests",
                   "provider_429", "workers", "spread_across_workers"),
    "faults": ("fault_rate", "tasks", "completed_ratio", "attempts_per_success"),
    "budget": ("tasks", "cap_usd", "provider_bill_usd", "ledger_usd", "overspend_usd",
               "refused", "budget_failed"),
}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_tiny_writes_valid_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Inherited by every process the bench starts: how leftovers are recognised.
    marker = uuid.uuid4().hex
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out),
         "--workers", "1", "--concurrency", "8"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "BENCH_SMOKE_MARKER": marker},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    for name, keys in REQUIRED.items():
        workload = results[name]
        for key in keys:
            assert _number(workload.get(key)), (name, key, workload)
    assert results["throughput"]["llm_steps_per_task"] == 3
    assert results["throughput"]["tool_steps_per_task"] == 2
    assert results["memory"]["in_flight"] == results["memory"]["target"]
    assert results["rate_limit"]["by_workers"]["1"]["llm_calls_per_task"] == 3
    assert _number(results["machine"]["cpu_count"]) and results["machine"]["python"]
    for package in ("celery", "kombu", "redis-py", "redis-server", "flask", "anthropic",
                    "openai", "sqlalchemy", "celeriac"):
        assert results["versions"][package], package

    markdown = (out / "RESULTS.md").read_text()
    assert "| throughput | ratio_to_bare |" in markdown and "## Definitions" in markdown
    # Nothing it started outlives it (simulators, workers, gunicorn and its workers).
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline", "environ"])
                 if (p.info["environ"] or {}).get("BENCH_SMOKE_MARKER") == marker]
    assert not leftovers, leftovers
