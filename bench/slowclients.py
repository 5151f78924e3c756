"""Slow and idle clients held open against the web tier, and latency measured
beside them: what an attacker with no key, or many idle browsers, can do to it.

Four kinds of connection are held open at once, each for as long as the caller
wants:

- ``partial_headers``: a request line and some headers, never finished;
- ``partial_body``: complete headers announcing a 1 kB body, of which 10 bytes come;
- ``idle``: a TCP connection that sends nothing;
- ``sse``: a complete ``GET /agent/events/<id>`` of a task that stays queued, its
  stream kept open and never read after the first bytes.

Then ``GET /healthz`` and ``POST /agent/run`` are timed one at a time, each on a
new connection, while all of those stay open.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field


@dataclass
class Held:
    """The connections held open, by kind, and how many the server closed early."""

    sockets: dict[str, list[socket.socket]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {kind: len(socks) for kind, socks in self.sockets.items()}

    def still_open(self) -> dict[str, int]:
        """Connections the server has not closed (a closed one reads as EOF)."""
        open_counts = {}
        for kind, socks in self.sockets.items():
            alive = 0
            for sock in socks:
                sock.setblocking(False)
                try:
                    alive += sock.recv(65536, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            open_counts[kind] = alive
        return open_counts


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextmanager
def hold_slow_clients(
    host: str,
    port: int,
    *,
    slow: int,
    sse: int,
    sse_task_id: str,
    headers: dict[str, str] | None = None,
    connect_timeout_s: float = 30.0,
) -> Iterator[Held]:
    """Open ``slow`` slow or idle connections (split over the three slow kinds) and
    ``sse`` event streams; close them all on exit."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    kinds = {
        "partial_headers": (b"GET /agent/tasks HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n"),
        "partial_body": (
            f"POST /agent/run HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{\"input\": \"".encode()
        ),
        "idle": b"",
    }
    stream_request = (
        f"GET /agent/events/{sse_task_id} HTTP/1.1\r\nHost: x\r\n{extra}"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    held = Held()
    with ExitStack() as stack:
        names = list(kinds)
        for i in range(slow):
            kind = names[i % len(names)]
            sock = stack.enter_context(_connect(host, port, connect_timeout_s))
            if kinds[kind]:
                sock.sendall(kinds[kind])
            held.sockets.setdefault(kind, []).append(sock)
        for _ in range(sse):
            sock = stack.enter_context(_connect(host, port, connect_timeout_s))
            sock.sendall(stream_request)
            held.sockets.setdefault("sse", []).append(sock)
        yield held


@dataclass
class Timed:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def time_requests(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    count: int,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Timed:
    """``count`` requests one after the other, each on a new connection; a request
    that gets no answer within ``timeout_s`` is an error, not a latency."""
    timed = Timed()
    for _ in range(count):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            response.read()
            timed.latencies_ms.append((time.perf_counter() - started) * 1000)
            timed.statuses[response.status] = timed.statuses.get(response.status, 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            timed.errors.append(type(exc).__name__)
        finally:
            conn.close()
    return timed


def submit_body(text: str) -> bytes:
    return json.dumps({"input": text}).encode()
