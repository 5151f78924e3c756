"""Starting and stopping what a workload needs.

A :class:`Harness` holds what the whole bench run shares (its scratch directory,
Redis, a config directory with the bench agent). Each workload repetition asks it for
a :class:`Stack`: a flushed Redis database of its own, a fresh store, its own
simulator process, and whatever workers or web server it then starts. Leaving the
``with`` block stops every process of the stack, even on error, and flushes the
Redis database again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import sys
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

from bench.backends import RedisServer, StoreHandle, create_store, free_port
from bench.processes import BenchError, Process, spawn, wait_for
from config.settings import CONFIG_DIR, PROJECT_DIR, Settings, load_settings

BENCH_AGENT = "bench"
BENCH_MODEL = "claude-sonnet-4-20250514"  # served by the Anthropic SDK
# The bench agent is the default agent with max_steps = 3; with the simulator's
# "[loop]" marker it makes exactly llm -> tool -> llm -> tool -> llm (see throughput).
BENCH_MAX_STEPS = 3
QUEUES = "high,default,low"
# "No provider limit": Celeriac's own limiter stays on (its Redis call per request is
# part of the cost measured) but with a limit far above anything this machine reaches.
NO_LIMITS = json.dumps({BENCH_MODEL: {"rpm": 10_000_000, "tpm": 10_000_000_000}})
# Environment variables a child must not inherit from the shell running the bench.
_DROPPED_ENV = ("REDIS_URL", "BROKER_URL", "DATABASE_URL", "ANTHROPIC_BASE_URL",
                "OPENAI_BASE_URL")
STARTUP_TIMEOUT_S = 90.0
SENTINEL_KEY = "bench:sentinel"  # set when a workload's database is flushed


def write_config_dir(target: Path) -> Path:
    """The product's data files, plus the bench agent appended to agents.toml."""
    shutil.copytree(CONFIG_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    agents_toml = target / "agents.toml"
    default = tomllib.loads(agents_toml.read_text())["agents"]["default"]["versions"][0]
    lines = [
        "",
        f"[agents.{BENCH_AGENT}]",
        'description = "The default agent with max_steps = 3, for the benchmark."',
        "",
        f"[[agents.{BENCH_AGENT}.versions]]",
        'version = "1"',
        "weight = 100",
        f"model = {_toml_str(BENCH_MODEL)}",
        "fallbacks = []",
        "tools = [" + ", ".join(_toml_str(t) for t in default["tools"]) + "]",
        f"max_steps = {BENCH_MAX_STEPS}",
        f"max_tokens = {int(default['max_tokens'])}",
        'priority = "normal"',
        f"budget_usd = {float(default['budget_usd'])}",
        f"system_prompt = {_toml_str(default['system_prompt'])}",
        "",
    ]
    with agents_toml.open("a") as fh:
        fh.write("\n".join(lines))
    return target


def _toml_str(value: str) -> str:
    # A TOML basic string; JSON's escapes for \, " and control characters are valid TOML.
    return json.dumps(value)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("CELERIAC_") and k not in _DROPPED_ENV
    }
    env.update(extra)
    return env


@dataclass
class Stack:
    name: str
    redis: RedisServer
    redis_db: int
    store: StoreHandle
    config_dir: Path
    log_dir: Path
    store_kind: str
    simulator: Process | None = None
    simulator_url: str = ""
    processes: list[Process] = field(default_factory=list)
    # Added to every child's environment and to settings() (e.g. CELERIAC_BUDGETS).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.redis.url(self.redis_db)

    @property
    def database_url(self) -> str:
        return self.store.url

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(
            {
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.database_url,
                "CELERIAC_SIMULATE": "1",
                "CELERIAC_SIMULATOR_URL": self.simulator_url,
                "CELERIAC_CONFIG_DIR": str(self.config_dir),
                "CELERIAC_LOG_LEVEL": "INFO",
                "CELERIAC_DEV_MODE": "1",
                "CELERIAC_LIMITS": NO_LIMITS,
                # The baseline app (bench.bare) reads its own names.
                "BENCH_BARE_BROKER_URL": self.redis_url,
                "BENCH_BARE_SIMULATOR_URL": self.simulator_url,
                **self.extra_env,
                **extra,
            }
        )

    def settings(self) -> Settings:
        """The same configuration, for the bench's own in-process clients. Built from
        the environment the children get, so a setting added later applies to both."""
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env(CELERIAC_LOG_LEVEL="WARNING"))
            return load_settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def flush(self) -> None:
        """Empty this workload's database, leaving only the sentinel."""
        client = self.redis.client(self.redis_db)
        try:
            client.flushdb()
            client.set(SENTINEL_KEY, self.name)
        finally:
            client.close()

    def check_undisturbed(self) -> None:
        client = self.redis.client(self.redis_db)
        try:
            if client.get(SENTINEL_KEY) != self.name:
                raise BenchError(
                    f"Redis database {self.redis_db} was flushed or reused by another process "
                    "during the workload, so its figures are void (use --redis private)"
                )
        finally:
            client.close()

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        process = spawn(f"{self.name}-{name}", argv, env, self.log_dir, PROJECT_DIR)
        self.processes.append(process)
        return process

    # -- the simulated provider -----------------------------------------------------

    def start_simulator(self, latency_ms: float, extra_args: Sequence[str] = ()) -> str:
        process = self.spawn(
            "simulator",
            [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", "0",
             "--latency-ms", f"{latency_ms:g}", *extra_args],
            child_env({}),
        )
        found = wait_for(
            lambda: re.search(r"listening on (http://\S+)", process.log_tail(2000)),
            timeout=STARTUP_TIMEOUT_S, what="the simulator", watch=[process],
        )
        self.simulator, self.simulator_url = process, found.group(1)
        return self.simulator_url

    def simulator_log(self) -> list[dict[str, Any]]:
        """The simulator's request log (``GET /_sim/log``), oldest first."""
        response = httpx.get(f"{self.simulator_url}/_sim/log", timeout=60)
        response.raise_for_status()
        body = response.json()
        entries: list[dict[str, Any]] = body["entries"] if isinstance(body, dict) else body
        return entries

    def reset_simulator(self) -> None:
        """Clear the log and the RPM window (``POST /_sim/reset``)."""
        httpx.post(f"{self.simulator_url}/_sim/reset", timeout=30).raise_for_status()

    # -- Celery workers -------------------------------------------------------------

    def start_workers(
        self,
        app: str,
        *,
        count: int,
        concurrency: int,
        env: dict[str, str],
        pool: str = "threads",
    ) -> list[Process]:
        """``count`` worker processes of ``celery -A app``; returns once all answer a
        ping. ``app`` is "tasks" (Celeriac) or "bench.bare" (the baseline)."""
        host = socket.gethostname()
        names: list[str] = []
        started: list[Process] = []
        kind = "celeriac" if app == "tasks" else "bare"
        for index in range(count):
            label = f"{kind}-worker-{index}"
            node = f"bench-{self.name}-{label}-{uuid.uuid4().hex[:6]}"
            names.append(f"{node}@{host}")
            started.append(
                self.spawn(
                    label,
                    [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", QUEUES,
                     "-P", pool, "-c", str(concurrency), "-n", f"{node}@%h",
                     "--without-mingle", "--without-gossip", "-l", "INFO"],
                    env,
                )
            )
        control = Celery("bench-control", broker=self.redis_url)
        waiting = set(names)
        try:
            def all_answered() -> bool:
                replies = control.control.ping(destination=sorted(waiting), timeout=0.5)
                for reply in replies or []:
                    waiting.difference_update(reply)
                return not waiting

            wait_for(all_answered, timeout=STARTUP_TIMEOUT_S, what=f"workers {sorted(waiting)}",
                     interval=0.2, watch=started)
        finally:
            control.close()
        return started

    # -- the web app ----------------------------------------------------------------

    def start_web(self) -> str:
        """gunicorn as the Procfile's ``web:`` line runs it, on a free port."""
        port = free_port()
        argv = procfile_command("web", {"CELERIAC_WEB_PORT": str(port)})
        if argv[0] == "gunicorn":
            argv = [sys.executable, "-m", "gunicorn", *argv[1:]]
        process = self.spawn("web", argv, self.env())
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=STARTUP_TIMEOUT_S, what="gunicorn", interval=0.2,
                 watch=[process])
        return base

    def stop_all(self, grace_s: float = 15.0) -> None:
        # Workers and web first, the simulator last (a warm shutdown may still call it).
        for process in reversed(self.processes):
            if process is not self.simulator:
                process.stop(grace_s)
        if self.simulator is not None:
            self.simulator.stop(5)


def procfile_command(process: str, variables: dict[str, str]) -> list[str]:
    """The Procfile's command for ``process``, with ${VAR:-default} expanded."""
    for line in (PROJECT_DIR / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            expanded = re.sub(
                r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), command
            )
            return shlex.split(expanded)
    raise BenchError(f"the Procfile has no {process!r} line")


class Harness:
    def __init__(self, scratch: Path, redis: RedisServer, *, store_kind: str,
                 redis_dbs: dict[str, int]):
        self.scratch = scratch
        self.redis = redis
        self.store_kind = store_kind
        self.redis_dbs = redis_dbs
        self.config_dir = write_config_dir(scratch / "config")

    @contextmanager
    def stack(self, workload: str, *, latency_ms: float, repetition: int = 0,
              simulator_args: Sequence[str] = ()) -> Iterator[Stack]:
        name = f"{workload}-r{repetition}"
        db = self.redis_dbs[workload]
        store = create_store(self.store_kind, self.scratch, name)
        stack = Stack(name, self.redis, db, store, self.config_dir, self.scratch / "logs",
                      self.store_kind)
        stack.flush()
        try:
            stack.start_simulator(latency_ms, simulator_args)
            yield stack
            stack.check_undisturbed()
        finally:
            stack.stop_all()
            client = self.redis.client(db)
            client.flushdb()
            client.close()
            store.drop()
