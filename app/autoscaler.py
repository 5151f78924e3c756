"""The autoscaler: grows and shrinks the Celery worker processes on this host.

Run one per host: ``python -m app.autoscaler [--min 1] [--max 4] [--interval 5] ...``
(``--help`` lists every option). Every interval it observes

- queue depth: LLEN of the broker's lists ``high``, ``default`` and ``low`` (on
  Redis, kombu keeps each queue in a list named after it; the ``<queue>\\x06\\x16<n>``
  lists of emulated priorities are added in too, though Celeriac sends none).
  Messages a worker has already taken, and countdown steps held in worker memory,
  are not waiting and not counted;
- CPU: the whole host's, since the last sample (psutil);
- whether a provider's rate limit is the bottleneck: some model is paused or
  slowed down (a ``celeriac:pause:<model>`` or ``celeriac:slow:<model>`` key exists:
  a 429, or exhausted rate-limit headers), or calls waited for rate-limit capacity
  (``agent_rate_limit_waits_total``, all models) faster than ``--rate-limit-waits``
  per second since the last sample. More workers would only wait too;

then asks ``celeriac.autoscale.decide`` and acts. An add starts
``celery -A tasks worker -Q high,default,low --pool P --concurrency C -n
autoscaled-<k>@%h`` with this process's environment. A remove sends SIGTERM to the
newest worker: Celery's warm shutdown stops taking messages, finishes the steps in
flight, then exits, so scaling down never kills a call in flight; the loop goes on
while it drains. Each decision is a JSON log line (``autoscale_decision``) and a
count in ``agent_autoscaler_decisions_total{action, reason_kind}``; the number of
consuming workers is ``celeriac:autoscaler:<host>:workers`` (refreshed every sample,
expires when the autoscaler stops refreshing it).

SIGTERM or SIGINT stops every worker warmly, waits for them all and exits 0; a
second signal asks them for a cold shutdown (SIGQUIT; unfinished steps are
redelivered). Workers run in their own session, so a terminal's Ctrl-C reaches only
the autoscaler, and on Linux they get SIGTERM if the autoscaler dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import psutil
import structlog
from redis import Redis, RedisError

from celeriac import redis_keys as keys
from celeriac.autoscale import Decision, Observation, PolicyConfig, decide, history_for
from celeriac.execution.priority import QUEUES
from celeriac.observability.metrics import RATE_LIMIT_WAITS
from celeriac.redaction import Redactor
from config.logging import configure_logging
from config.settings import Settings

DECISIONS = "agent_autoscaler_decisions_total"  # labels: action, reason_kind
_PRIORITY_LISTS = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's priority steps
_PR_SET_PDEATHSIG = 1

log = structlog.get_logger("celeriac.autoscaler")


def workers_gauge_key(host: str) -> str:
    """The number of workers this host's autoscaler keeps consuming; expires (after
    ``gauge_ttl_s``) when the autoscaler stops refreshing it."""
    return keys.autoscaler_workers(host)


def gauge_ttl_s(interval_s: float) -> int:
    return max(30, int(3 * interval_s) + 1)


@dataclass
class Worker:
    index: int
    name: str
    process: subprocess.Popen[bytes]
    draining: bool = False


class WorkerPool:
    """The worker processes this autoscaler started, oldest first."""

    def __init__(self, command: Callable[[str], list[str]], prefix: str):
        self.command = command
        self.prefix = prefix
        self.host = socket.gethostname()
        self.workers: list[Worker] = []
        self._prctl: Any = ctypes.CDLL(None).prctl if sys.platform == "linux" else None

    @property
    def consuming(self) -> list[Worker]:
        return [w for w in self.workers if not w.draining]

    def _die_with_parent(self) -> None:
        # Runs in the child between fork and exec: SIGTERM (a warm shutdown) if
        # the autoscaler dies, so no worker outlives it unmanaged.
        self._prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def start(self) -> Worker:
        taken = {w.index for w in self.workers}  # draining ones keep their names
        index = next(k for k in itertools.count(1) if k not in taken)
        process = subprocess.Popen(
            self.command(f"{self.prefix}-{index}@%h"),
            start_new_session=True,
            preexec_fn=self._die_with_parent if self._prctl is not None else None,
        )
        worker = Worker(index, f"{self.prefix}-{index}@{self.host}", process)
        self.workers.append(worker)
        log.info("worker_started", worker=worker.name, pid=process.pid)
        return worker

    def drain_newest(self) -> Worker | None:
        consuming = self.consuming
        if not consuming:
            return None
        worker = consuming[-1]
        worker.draining = True
        worker.process.send_signal(signal.SIGTERM)
        log.info("worker_draining", worker=worker.name, pid=worker.process.pid)
        return worker

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            worker.draining = True
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def reap(self) -> None:
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            if worker.draining:
                log.info("worker_stopped", worker=worker.name, returncode=code)
            else:
                log.warning("worker_exited", worker=worker.name, returncode=code)


class Probe:
    """Reads what the policy needs from the broker, Redis and the host."""

    def __init__(self, broker: Redis, redis: Redis, rate_limit_waits_per_s: float):
        self.broker = broker
        self.redis = redis
        self.waits_per_s = rate_limit_waits_per_s
        self._waits: tuple[float, float] | None = None  # (at, total) at the last sample
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def queue_depth(self) -> int:
        pipe = self.broker.pipeline(transaction=False)
        for queue in QUEUES:
            for suffix in _PRIORITY_LISTS:
                pipe.llen(queue + suffix)
        return sum(int(n) for n in pipe.execute())

    def rate_limited(self, now: float) -> bool:
        # Paused, or slowed down by provider feedback.
        paused = any(
            next(iter(self.redis.scan_iter(match=pattern, count=1000)), None) is not None
            for pattern in (keys.provider_pause("*"), keys.provider_slowdown("*"))
        )
        counts = self.redis.hvals(keys.metric_counter(RATE_LIMIT_WAITS.name))
        total = sum(float(v) for v in counts)
        previous, self._waits = self._waits, (now, total)
        if paused or previous is None or now <= previous[0]:
            return paused
        return (total - previous[1]) / (now - previous[0]) > self.waits_per_s

    def observe(self, workers: int, now: float) -> Observation:
        return Observation(at=now, workers=workers, queue_depth=self.queue_depth(),
                           cpu_percent=psutil.cpu_percent(interval=None),
                           rate_limited=self.rate_limited(now))


class Autoscaler:
    def __init__(self, pool: WorkerPool, probe: Probe, redis: Redis, config: PolicyConfig,
                 interval_s: float):
        self.pool, self.probe, self.redis = pool, probe, redis
        self.config, self.interval_s = config, interval_s
        self.history = history_for(config)
        self.gauge = workers_gauge_key(pool.host)

    def tick(self, now: float) -> list[Decision]:
        """One sample: observe, decide, act. A bounds action is repeated until the
        bounds hold (starting ``--min`` workers at once); anything else is one action."""
        self.pool.reap()
        try:
            state = self.probe.observe(len(self.pool.consuming), now)
        except RedisError as exc:
            log.warning("autoscale_observe_failed", error=str(exc))
            return []
        decision = decide(state, self.history, self.config)
        self.history = self.history.record(state, decision)
        self._act(decision, state)
        decisions = [decision]
        while decision.kind == "bounds" and decision.action != "hold":
            state = replace(state, workers=len(self.pool.consuming))
            decision = decide(state, self.history, self.config)
            if decision.kind != "bounds" or decision.action == "hold":
                break
            self._act(decision, state)
            decisions.append(decision)
        return decisions

    def _act(self, decision: Decision, state: Observation) -> None:
        if decision.action == "add":
            self.pool.start()
        elif decision.action == "remove":
            self.pool.drain_newest()
        consuming = len(self.pool.consuming)
        log.info("autoscale_decision", action=decision.action, reason=decision.reason,
                 reason_kind=decision.kind, workers=consuming,
                 draining=len(self.pool.workers) - consuming, queue_depth=state.queue_depth,
                 cpu_percent=state.cpu_percent, rate_limited=state.rate_limited)
        labels = _labels_json(decision)
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrbyfloat(keys.metric_counter(DECISIONS), labels, 1)
            pipe.set(self.gauge, consuming, ex=gauge_ttl_s(self.interval_s))
            pipe.execute()
        except RedisError as exc:
            log.warning("autoscale_metrics_failed", error=str(exc))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.tick(time.monotonic())
            stop.wait(self.interval_s)

    def shutdown(self, cold: threading.Event) -> None:
        """Warm shutdown of every worker, then wait for them all; cold if asked."""
        log.info("autoscaler_stopping", workers=len(self.pool.workers))
        self.pool.signal_all(signal.SIGTERM)
        sent_cold = False
        while self.pool.workers:
            if cold.is_set() and not sent_cold:
                log.warning("autoscaler_cold_shutdown", workers=len(self.pool.workers))
                self.pool.signal_all(signal.SIGQUIT)
                sent_cold = True
            time.sleep(0.1)
            self.pool.reap()
        with contextlib.suppress(RedisError):  # if not, the key expires on its own
            self.redis.delete(self.gauge)
        log.info("autoscaler_stopped")


def _labels_json(decision: Decision) -> str:
    # What celeriac.observability.metrics writes and the exporter reads: a JSON object, sorted keys.
    return json.dumps({"action": decision.action, "reason_kind": decision.kind}, sort_keys=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = PolicyConfig()
    parser = argparse.ArgumentParser(
        prog="python -m app.autoscaler",
        description="Start and stop Celery worker processes on this host as the load asks.",
    )
    arg = parser.add_argument
    arg("--min", type=int, default=d.min_workers, help="fewest workers (default %(default)s)")
    arg("--max", type=int, default=d.max_workers, help="most workers (default %(default)s)")
    arg("--interval", type=float, default=5.0, help="seconds between samples (%(default)s)")
    arg("--add-above", type=int, default=d.add_above,
        help="add a worker when more messages than this wait (%(default)s)")
    arg("--remove-below", type=int, default=d.remove_below,
        help="remove one when fewer than this wait (%(default)s)")
    arg("--cpu-above", type=float, default=d.cpu_above,
        help="add one when host CPU %% is above this and work waits; 100 = off (%(default)s)")
    arg("--add-after", type=int, default=d.add_after,
        help="consecutive samples of pressure before adding (%(default)s)")
    arg("--remove-after", type=int, default=d.remove_after,
        help="consecutive idle samples before removing (%(default)s)")
    arg("--cooldown", type=float, default=d.cooldown_s,
        help="seconds between two actions (%(default)s)")
    arg("--rate-limit-waits", type=float, default=1.0,
        help="rate-limit waits per second above which no worker is added (%(default)s)")
    arg("--pool", default=None, help="worker pool (default CELERIAC_WORKER_POOL or threads)")
    arg("--concurrency", type=int, default=None,
        help="threads or processes per worker (default CELERIAC_WORKER_CONCURRENCY or 16)")
    arg("--name", default="autoscaled", help="node names are <name>-<k>@<host>")
    arg("--loglevel", default="INFO", help="the workers' log level (%(default)s)")
    arg("--worker-option", action="append", default=[], metavar="OPTION",
        help="extra option for every worker, e.g. --worker-option=--without-mingle")
    args = parser.parse_args(argv)
    try:
        args.policy = PolicyConfig(
            min_workers=args.min, max_workers=args.max, add_above=args.add_above,
            remove_below=args.remove_below, cpu_above=args.cpu_above,
            add_after=args.add_after, remove_after=args.remove_after, cooldown_s=args.cooldown)
    except ValueError as exc:
        parser.error(str(exc))
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, Redactor(settings.secret_values()))
    broker_url = settings.effective_broker_url
    if urlparse(broker_url).scheme not in ("redis", "rediss", "unix"):
        print("error: the autoscaler reads queue depth from a Redis broker; BROKER_URL is "
              f"{urlparse(broker_url).scheme}://", file=sys.stderr)
        return 2
    worker = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", ",".join(QUEUES),
              "--pool", args.pool or settings.worker_pool,
              "--concurrency", str(args.concurrency or settings.worker_concurrency),
              "--loglevel", args.loglevel]
    pool = WorkerPool(lambda name: [*worker, "-n", name, *args.worker_option], args.name)
    redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)
    broker = Redis.from_url(broker_url, decode_responses=True, socket_timeout=10)
    probe = Probe(broker, redis, args.rate_limit_waits)
    scaler = Autoscaler(pool, probe, redis, args.policy, args.interval)

    stop, cold = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            cold.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    policy = args.policy
    log.info("autoscaler_started", pid=os.getpid(), host=pool.host,
             min_workers=policy.min_workers, max_workers=policy.max_workers,
             add_above=policy.add_above, remove_below=policy.remove_below,
             cpu_above=policy.cpu_above, cooldown_s=policy.cooldown_s, interval_s=args.interval)
    try:
        scaler.run(stop)
    finally:
        scaler.shutdown(cold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
