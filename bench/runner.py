"""Running the selected workloads, repeating them, and taking the median.

A workload that fails is reported as ``{"error": ...}`` and the others still run; the
bench then exits non-zero. Whatever happens, the processes of the failed stack have
been stopped by the harness before the next workload starts.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import environment
from bench.backends import RedisServer
from bench.harness import Harness
from bench.processes import BenchError
from bench.registry import Context, Metrics, Sizes, Workload
from bench.workloads import in_order


@dataclass(frozen=True)
class Plan:
    size: str
    sizes: Sizes
    only: frozenset[str] | None
    workers: int
    concurrency: int
    store: str
    redis_db_base: int


def redis_databases(workloads: Sequence[Workload], base: int) -> dict[str, int]:
    """One database per runnable workload, in registry order, from ``base`` on; the
    numbers do not depend on --only, so a workload always uses the same one."""
    runnable = [w.name for w in workloads if w.run is not None]
    return {name: base + index for index, name in enumerate(runnable)}


def run_plan(plan: Plan, scratch: Path, redis: RedisServer,
             log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """Returns the results document and whether every selected workload succeeded."""
    started = time.monotonic()
    workloads = in_order()
    dbs = redis_databases(workloads, plan.redis_db_base)
    doc: dict[str, Any] = {
        "machine": environment.machine(),
        "versions": environment.versions(redis.version()),
    }
    harness = Harness(scratch, redis, store_kind=plan.store, redis_dbs=dbs)
    ok = True
    for wl in workloads:
        if wl.run is None:
            doc[wl.name] = {"skipped": wl.skipped or "not runnable"}
            continue
        if plan.only is not None and wl.name not in plan.only:
            doc[wl.name] = {"skipped": "not selected (--only)"}
            continue
        repeats = plan.sizes.repeats
        if wl.max_repeats is not None:
            repeats = min(repeats, wl.max_repeats)
        runs: list[Metrics] = []
        try:
            for repetition in range(repeats):
                log(f"{wl.name}: repetition {repetition + 1} of {repeats}")
                ctx = Context(harness, plan.sizes, plan.size, plan.workers, plan.concurrency,
                              repetition, log)
                load_before = os.getloadavg()[0]
                metrics = wl.run(ctx)
                # The machine is shared: a high load beside a figure explains it.
                metrics["load_avg_1m"] = round(max(load_before, os.getloadavg()[0]), 2)
                runs.append(metrics)
        except (BenchError, AssertionError, OSError, ValueError, KeyError) as exc:
            ok = False
            log(f"{wl.name}: FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
            doc[wl.name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            continue
        doc[wl.name] = aggregate(runs, wl.summed)
        log(f"{wl.name}: {doc[wl.name]}")
    doc["run"] = {
        "size": plan.size,
        "repeats": plan.sizes.repeats,
        "workers": plan.workers,
        "concurrency": plan.concurrency,
        "pool": "threads",
        "store": plan.store,
        "redis": redis.kind,
        "redis_databases": dbs,
        "duration_s": round(time.monotonic() - started, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return doc, ok


def aggregate(runs: Sequence[Metrics], summed: Sequence[str] = ()) -> Metrics:
    """The median of every number over the repetitions (a sum for ``summed`` keys);
    other values are kept when all repetitions agree, else listed."""
    if len(runs) == 1:
        return dict(runs[0])
    out: Metrics = {}
    for key in runs[0]:
        values = [run.get(key) for run in runs]
        if all(_is_number(v) for v in values):
            numbers = [float(v) for v in values if v is not None]
            if key in summed:
                out[key] = _tidy(sum(numbers))
            else:
                finite = [n for n in numbers if math.isfinite(n)]
                out[key] = _tidy(statistics.median(finite)) if finite else math.nan
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            out[key] = " | ".join(str(v) for v in values)
    out["repetitions"] = len(runs)
    out["each"] = [dict(run) for run in runs]
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tidy(value: float) -> float | int:
    return int(value) if value.is_integer() else round(value, 3)
