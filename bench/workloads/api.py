"""API: submission latency through gunicorn (the Procfile's ``web:`` line) at a fixed
200 requests/s, open loop (see bench.loadgen). No worker runs: the tasks only queue
up, in this workload's own Redis database and store, both thrown away afterwards.

A short warm-up at the same rate comes first and is not counted. Every request is
a ``POST /agent/run`` answered ``202``; anything else, or no answer within 10 s, is
an error. A request sent on a kept-alive connection that the server closed at that
moment is resent once on a new connection, as HTTP clients do, and counted in
``stale_connection_retries``.
"""

from __future__ import annotations

import json
from urllib.parse import urlparse

from bench.loadgen import open_loop, post_json
from bench.registry import Context, Metrics, workload
from bench.stats import percentile, rounded

RPS = 200.0


@workload("api", summed=("errors",))
def run(ctx: Context) -> Metrics:
    count = int(RPS * ctx.sizes.api_seconds)
    with ctx.harness.stack("api", latency_ms=0, repetition=ctx.repetition) as stack:
        base = stack.start_web()
        url = urlparse(base)
        host, port = url.hostname or "127.0.0.1", url.port or 80

        def request(i: int) -> bytes:
            body = json.dumps({"input": f"What is {i} + {i}?"}).encode()
            return post_json(host, port, "/agent/run", body)

        ctx.log(f"api: warm-up, {ctx.sizes.api_warmup} requests")
        open_loop(host, port, request, rps=RPS, count=ctx.sizes.api_warmup)
        ctx.log(f"api: {count} requests at {RPS:g}/s, open loop")
        result = open_loop(host, port, request, rps=RPS, count=count)
    latencies = result.latencies_ms
    return {
        "rps": RPS,
        "submit_ms_p50": rounded(percentile(latencies, 50), 3),
        "submit_ms_p99": rounded(percentile(latencies, 99), 3),
        "errors": result.errors,
        "requests": result.sent,
        "stale_connection_retries": result.stale_retries,
        "achieved_rps": rounded(result.sent / result.seconds, 1),
        "submit_ms_max": rounded(max(latencies, default=float("nan")), 3),
        "send_lag_ms_p99": rounded(percentile(result.send_lag_ms, 99), 3),
        "statuses": ", ".join(f"{k} x{v}" for k, v in sorted(result.statuses.items())),
    }
