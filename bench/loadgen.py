"""An open-loop HTTP load generator: request i is sent at start + i / rps whatever
happened to the earlier ones, so a slow server cannot slow the offered load down
(no coordinated omission). Latency is measured from the scheduled send time to the
last byte of the response, so any lag of the generator itself counts against the
server rather than hiding it; ``send_lag_ms_p99`` reports that lag.

Plain asyncio streams and keep-alive connections, opened on demand when none is
idle: at a few hundred requests per second this costs far less CPU than a full HTTP
client, which matters on a 2-core machine shared with the server under test.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
REQUEST_TIMEOUT_S = 10.0


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    send_lag_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    stale_retries: int = 0  # requests resent after the server closed an idle connection
    sent: int = 0
    seconds: float = 0.0


class _Pool:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[Conn] = []
        self.opened = 0

    async def get(self, *, fresh: bool = False) -> tuple[Conn, bool]:
        """An idle connection the server has not closed (the server drops idle
        keep-alive connections after a few seconds), else a new one."""
        while self.idle and not fresh:
            reader, writer = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return (reader, writer), True
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port), False

    def put(self, conn: Conn) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _exchange(conn: Conn, request: bytes) -> tuple[int, bool]:
    """Send one request, read one response; returns (status, keep the connection)."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" not in headers:
        await reader.read()  # the body runs to the end of the connection
        return status, False
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection") != "close"


async def _one(pool: _Pool, request: bytes, scheduled: float, expect: int,
               result: LoadResult) -> None:
    loop = asyncio.get_running_loop()
    result.send_lag_ms.append((loop.time() - scheduled) * 1000)
    for attempt in range(2):
        conn: Conn | None = None
        reused = False
        try:
            conn, reused = await pool.get(fresh=attempt > 0)
            status, keep = await asyncio.wait_for(_exchange(conn, request), REQUEST_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ValueError, IndexError) as exc:
            if conn is not None:
                conn[1].close()
            # A kept-alive connection the server closed just as we sent on it: retry
            # once, on a new connection (what HTTP clients do). Counted, not hidden.
            if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                result.stale_retries += 1
                continue
            result.errors += 1
            result.statuses[type(exc).__name__] += 1
            return
        if keep:
            pool.put(conn)
        else:
            conn[1].close()
        result.statuses[str(status)] += 1
        if status == expect:
            result.latencies_ms.append((loop.time() - scheduled) * 1000)
        else:
            result.errors += 1
        return


async def _run(host: str, port: int, build: Callable[[int], bytes], rps: float, count: int,
               expect: int) -> LoadResult:
    loop = asyncio.get_running_loop()
    pool = _Pool(host, port)
    result = LoadResult()
    tasks: list[asyncio.Task[None]] = []
    start = loop.time() + 0.05
    try:
        for i in range(count):
            scheduled = start + i / rps
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(pool, build(i), scheduled, expect, result)))
            result.sent += 1
        await asyncio.gather(*tasks)
    finally:
        pool.close()
    result.seconds = loop.time() - start
    return result


def post_json(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def open_loop(host: str, port: int, build: Callable[[int], bytes], *, rps: float,
              count: int, expect: int = 202) -> LoadResult:
    """Send ``count`` requests, ``build(i)`` being the i-th, at ``rps`` per second."""
    started = time.monotonic()
    result = asyncio.run(_run(host, port, build, rps, count, expect))
    result.seconds = result.seconds or time.monotonic() - started
    return result
