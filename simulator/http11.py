"""HTTP/1.1 with keep-alive over asyncio streams, parsed by h11.

One coroutine per connection rather than one thread per request: a thousand clients
each waiting out 200 ms of simulated latency cost a thousand sleeping coroutines.
The handler answers a ``Request`` with a ``Response``, or with ``None`` to hang up
without answering (the "timeout" fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 300.0  # a kept-alive connection with no request is closed after this
READ_TIMEOUT_S = 60.0  # a request that stalls half-sent is dropped after this
BACKLOG = 4096  # asyncio's default of 100 drops bursts of new connections


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # names lower-cased; repeated headers joined by ", "
    body: bytes
    arrived: float  # unix time the request line arrived


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, json.dumps(payload).encode(), headers)


Handler = Callable[[Request], Awaitable[Response | None]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen, and return the bound port (useful when asked for port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port, backlog=BACKLOG)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Python 3.11's wait_closed() does not wait for open connections: end them.
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while True:
                request = await _read_request(conn, reader, writer)
                if request is None:
                    break
                response = request if isinstance(request, Response) else await self._answer(request)
                if response is None:
                    break
                await _send(conn, writer, response)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # "Connection: close", or a body we refused to read
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": str(exc)},
                }
                with contextlib.suppress(Exception):
                    await _send(conn, writer, Response.json(exc.error_status_hint, body))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or went quiet; nothing to answer
        except asyncio.CancelledError:
            # close() cancels this task, which asyncio owns and nobody awaits; on
            # Python 3.11 a cancelled connection task makes asyncio's stream callback
            # log a spurious traceback, so end quietly instead.
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, request: Request) -> Response | None:
        try:
            return await self._handler(request)
        except Exception:
            # A bug in the simulator should look like a provider's 500 to the
            # client, and be loud here.
            log.exception("simulator handler failed on %s %s", request.method, request.path)
            body = {"type": "error", "error": {"type": "api_error", "message": "simulator bug"}}
            return Response.json(500, body)


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | Response | None:
    """The next whole request; a Response for one refused before its body was read;
    None when the client closed the connection between requests."""
    head: h11.Request | None = None
    arrived = 0.0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            idle = conn.their_state is h11.IDLE
            timeout = IDLE_TIMEOUT_S if idle else READ_TIMEOUT_S
            conn.receive_data(await asyncio.wait_for(reader.read(65536), timeout))
        elif isinstance(event, h11.Request):
            head, arrived = event, time.time()
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                message = f"request body exceeds {MAX_BODY_BYTES} bytes"
                error = {
                    "type": "error",
                    "error": {"type": "request_too_large", "message": message},
                }
                return Response.json(413, error)
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _request(head, bytes(body), arrived)
        else:
            return None  # ConnectionClosed


def _request(head: h11.Request, body: bytes, arrived: float) -> Request:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = head.target.decode("latin-1")
    return Request(head.method.decode("ascii"), target.split("?", 1)[0], headers, body, arrived)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(response.body))),
        ("server", "celeriac-simulator"),
        *response.headers,
    ]
    head = h11.Response(
        status_code=response.status, headers=headers, reason=_reason(response.status)
    )
    writer.write(
        conn.send(head) + conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage())
    )
    await writer.drain()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Overloaded" if status == 529 else b""
