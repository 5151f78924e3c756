"""Memory: worker RSS and Redis growth with many agents in flight, all waiting on the
provider.

One worker process (threads pool) with one thread per agent: under the threads pool
an in-flight step holds its thread for the whole provider call. Each task asks the
simulator for a 300 s answer (``metadata.simulator.latency_ms``; the provider timeout
is raised above it), so nothing finishes while we look. After a warm-up task, the
idle RSS and Redis usage are taken; then the agents are submitted and we wait until
the worker holds an open connection to the simulator for each of them.

``in_flight`` is the number of provider calls actually open at the peak (TCP
connections from the worker to the simulator, cross-checked with running LLM steps in
the store). ``redis_growth_mb`` is the growth of this workload's Redis database
(MEMORY USAGE of its keys: queued and unacked messages, metrics); the server-wide
``used_memory`` growth is reported beside it, but other databases on a shared server
add noise to it. The worker is killed afterwards (a warm shutdown would wait 300 s).
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import psutil
import redis

from bench.drivers import CeleriacDriver, simulator_metadata
from bench.processes import Process, wait_for
from bench.registry import Context, Metrics, workload
from bench.stats import rounded

HOLD_MS = 300_000.0
SETTLE_S = 2.0  # after the last call opened: RSS is sampled over this window
MB = 2**20


@workload("memory")
def run(ctx: Context) -> Metrics:
    n = ctx.sizes.memory_in_flight
    with ctx.harness.stack("memory", latency_ms=0, repetition=ctx.repetition) as stack:
        driver = CeleriacDriver(stack)
        client = stack.redis.client(stack.redis_db)
        try:
            env = stack.env(CELERIAC_PROVIDER_TIMEOUT_S=str(HOLD_MS / 1000 * 2))
            (worker,) = stack.start_workers("tasks", count=1, concurrency=n, env=env)
            ctx.log("memory: warm-up task")
            driver.submit("What is 1 + 1?")
            driver.wait_terminal(1, 60, watch=[worker])
            idle_rss = _sample_rss(worker, 0.5)
            idle_db, idle_server = _db_bytes(client), _used_memory(client)
            ctx.log(f"memory: {n} agents, each waiting {HOLD_MS / 1000:g} s on the provider")
            for i in range(n):
                driver.submit(f"[loop] memory task {i}", metadata=simulator_metadata(HOLD_MS))
            sim_port = urlparse(stack.simulator_url).port or 0

            def all_waiting() -> bool:
                return _open_calls(worker, sim_port) >= n

            try:
                wait_for(all_waiting, timeout=60 + n * 0.25, interval=0.5,
                         what=f"{n} open provider calls", watch=[worker])
            except Exception as exc:  # report what was reached, honestly
                ctx.log(f"memory: not all calls opened ({exc}); measuring what is in flight")
            peak_rss = _sample_rss(worker, SETTLE_S)
            in_flight = min(_open_calls(worker, sim_port),
                            driver.count_steps("running", kind="llm"))
            peak_db, peak_server = _db_bytes(client), _used_memory(client)
            threads = psutil.Process(worker.pid).num_threads()
            worker.stop(grace_s=0)  # the calls would hold a warm shutdown for minutes
        finally:
            client.close()
            driver.close()
    return {
        "in_flight": in_flight,
        "target": n,
        "worker_rss_mb": rounded(peak_rss),
        "worker_rss_idle_mb": rounded(idle_rss),
        "worker_rss_kb_per_agent": rounded((peak_rss - idle_rss) * 1024 / max(in_flight, 1), 1),
        "worker_threads": threads,
        "redis_growth_mb": rounded((peak_db - idle_db) / MB, 3),
        "redis_used_memory_growth_mb": rounded((peak_server - idle_server) / MB, 3),
    }


def _sample_rss(worker: Process, seconds: float) -> float:
    peak = worker.rss_mb()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        peak = max(peak, worker.rss_mb())
    return peak


def _open_calls(worker: Process, port: int) -> int:
    try:
        connections = psutil.Process(worker.pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1 for c in connections
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _db_bytes(client: redis.Redis) -> int:
    total = 0
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    for size in pipe.execute():
        total += int(size or 0)
    return total


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])
