"""The workload registry, the sizes of each bench mode, and what a workload is given.

A workload is a function ``run(ctx) -> metrics`` registered under its name; its
metrics are plain numbers (and a few strings). The runner repeats it and reports the
median of each number. A workload that cannot run yet is registered with the reason,
and reported as ``{"skipped": reason}``::

    @workload("throughput")
    def run(ctx: Context) -> Metrics: ...

    pending("faults", "the fault-injection workload has not landed yet")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import Harness

Metrics = dict[str, Any]
Runner = Callable[["Context"], Metrics]


@dataclass(frozen=True)
class Sizes:
    repeats: int
    throughput_tasks: int
    overhead_runs: int
    api_seconds: float
    api_warmup: int
    memory_in_flight: int
    priority_backlog: int
    priority_highs: int
    # rate_limit: the simulator's and Celeriac's limit, agents of 3 LLM calls each, the
    # worker-process counts run one after the other, and the rolling window checked.
    rate_limit_rpm: int = 600
    rate_limit_agents: int = 300
    rate_limit_workers: tuple[int, ...] = (1, 2, 4)
    rate_limit_window_s: float = 60.0
    fault_tasks: int = 200
    budget_tasks: int = 200
    # slow_clients: connections held open (slow or idle, and event streams), and the
    # requests timed of each kind (health checks, submissions) beside them.
    slow_clients: int = 1000
    slow_streams: int = 500
    slow_requests: int = 300


SIZES = {
    "full": Sizes(repeats=3, throughput_tasks=1000, overhead_runs=100, api_seconds=15,
                  api_warmup=200, memory_in_flight=1000, priority_backlog=500,
                  priority_highs=20),
    "quick": Sizes(repeats=1, throughput_tasks=50, overhead_runs=20, api_seconds=5,
                   api_warmup=100, memory_in_flight=100, priority_backlog=100,
                   priority_highs=10, rate_limit_rpm=600, rate_limit_agents=40,
                   rate_limit_workers=(1, 2), rate_limit_window_s=10.0, fault_tasks=40,
                   budget_tasks=200),
    # For the smoke test: every workload runs, and proves only that it can.
    "tiny": Sizes(repeats=1, throughput_tasks=8, overhead_runs=4, api_seconds=1,
                  api_warmup=20, memory_in_flight=10, priority_backlog=12, priority_highs=3,
                  rate_limit_rpm=600, rate_limit_agents=8, rate_limit_workers=(1,),
                  rate_limit_window_s=3.0, fault_tasks=8, budget_tasks=60),
}


@dataclass
class Context:
    harness: Harness
    sizes: Sizes
    size: str
    workers: int  # worker processes for throughput and overhead, Celeriac and baseline alike
    concurrency: int  # threads per worker process
    repetition: int
    log: Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    name: str
    run: Runner | None
    skipped: str | None = None
    # Keys added up over repetitions (error counts) rather than reported as a median.
    summed: tuple[str, ...] = ()
    # At most this many repetitions (a long workload that measures its own spread).
    max_repeats: int | None = None


REGISTRY: dict[str, Workload] = {}


def workload(name: str, *, summed: tuple[str, ...] = (),
             max_repeats: int | None = None) -> Callable[[Runner], Runner]:
    def register(run: Runner) -> Runner:
        REGISTRY[name] = Workload(name, run, summed=summed, max_repeats=max_repeats)
        return run

    return register


def pending(name: str, reason: str) -> None:
    REGISTRY[name] = Workload(name, None, skipped=reason)
