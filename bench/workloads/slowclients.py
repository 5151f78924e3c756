"""Slow clients: the API's latency while 1,000 slow or idle connections and 500 event
streams are held open (bench.slowclients), through gunicorn as the Procfile's
``web:`` line runs it. No worker runs, so the streamed task stays queued and its
streams stay open. ``GET /healthz`` and ``POST /agent/run`` are timed one at a time,
each on a new connection; an answer that does not come within 10 s is an error.
"""

from __future__ import annotations

from urllib.parse import urlparse

import httpx

from bench.registry import Context, Metrics, workload
from bench.slowclients import hold_slow_clients, submit_body, time_requests
from bench.stats import percentile, rounded


@workload("slow_clients", summed=("errors",))
def run(ctx: Context) -> Metrics:
    slow, streams, count = ctx.sizes.slow_clients, ctx.sizes.slow_streams, ctx.sizes.slow_requests
    with ctx.harness.stack("slow_clients", latency_ms=0, repetition=ctx.repetition) as stack:
        base = stack.start_web()
        url = urlparse(base)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        task_id = httpx.post(f"{base}/agent/run", json={"input": "What is 1 + 1?"},
                             timeout=30).json()["task_id"]
        ctx.log(f"slow_clients: holding {slow} slow connections and {streams} streams")
        with hold_slow_clients(host, port, slow=slow, sse=streams, sse_task_id=task_id) as held:
            health = time_requests(host, port, "GET", "/healthz", count=count)
            submits = time_requests(host, port, "POST", "/agent/run", count=count,
                                    body=submit_body("What is 3 + 4?"),
                                    headers={"Content-Type": "application/json"})
            still_open = held.still_open()
    held_open = sum(still_open.values())
    return {
        "slow_connections": slow,
        "open_streams": streams,
        "held_open_at_end": held_open,
        "healthz_ms_p50": rounded(percentile(health.latencies_ms, 50), 3),
        "healthz_ms_p99": rounded(percentile(health.latencies_ms, 99), 3),
        "submit_ms_p50": rounded(percentile(submits.latencies_ms, 50), 3),
        "submit_ms_p99": rounded(percentile(submits.latencies_ms, 99), 3),
        "errors": len(health.errors) + len(submits.errors)
        + sum(n for status, n in health.statuses.items() if status != 200)
        + sum(n for status, n in submits.statuses.items() if status != 202),
        "requests": 2 * count,
    }
