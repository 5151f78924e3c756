"""One HTTP POST to a checked target: connected to the checked addresses only,
within one overall deadline, following no redirect.

httpcore (the engine under httpx) is used directly because its network backend is
the seam needed here: ``connect_tcp`` receives the URL's host name and this backend
connects to the addresses the SSRF check approved instead, so nothing resolves the
name a second time. The URL keeps its host name, so the ``Host`` header, TLS server
name (SNI) and certificate verification are all for the name, as they should be.
httpx 0.28's transport takes no network backend, and httpcore never follows
redirects nor reads proxy variables from the environment.

Every read and write is also clamped to the time left before one deadline: per-call
timeouts alone let a server that drips a byte every few seconds hold a worker forever.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from celeriac.webhooks.ssrf import IPAddress, Target

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # at most MAX_RESPONSE_BYTES of it
    address: IPAddress  # where the request went


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    return httpcore.default_ssl_context()


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout_s: float,
    total_timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` to ``target``; raises httpcore's ``TimeoutException`` or
    ``NetworkError`` subclasses (or ``ProtocolError``) when no response came."""
    deadline = time.monotonic() + total_timeout_s
    backend = PinnedBackend(target, deadline)
    url = httpcore.URL(scheme=target.scheme, host=target.host, port=target.port, target=target.path)
    sent = [("Host", target.host_header), *headers.items()]
    timeouts = {
        "connect": min(connect_timeout_s, total_timeout_s),
        "read": total_timeout_s,
        "write": total_timeout_s,
        "pool": total_timeout_s,
    }
    with (
        httpcore.ConnectionPool(
            ssl_context=ssl_context or default_ssl_context(),
            network_backend=backend,
            max_connections=1,
            retries=0,
        ) as pool,
        pool.stream(
            "POST", url, headers=sent, content=body, extensions={"timeout": timeouts}
        ) as response,
    ):
        received = bytearray()
        for chunk in response.iter_stream():
            received += chunk
            if len(received) >= MAX_RESPONSE_BYTES:
                break  # enough to report; closing drops the connection
        assert backend.connected_to is not None
        return Response(
            status=response.status,
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers},
            body=bytes(received[:MAX_RESPONSE_BYTES]),
            address=backend.connected_to,
        )


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to the target's checked addresses, in order, and to nothing else."""

    def __init__(self, target: Target, deadline: float):
        self._target = target
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()
        self.connected_to: IPAddress | None = None

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if (host, port) != (self._target.host, self._target.port):
            raise httpcore.ConnectError(f"refusing to connect to unchecked {host}:{port}")
        failure: Exception | None = None
        for address in self._target.addresses:
            budget = _clamp(timeout, self._deadline, httpcore.ConnectTimeout)
            try:
                stream = self._inner.connect_tcp(
                    str(address), port, budget, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # try the next checked address
                continue
            self.connected_to = address
            return _DeadlineStream(stream, self._deadline)
        assert failure is not None  # a Target always has at least one address
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks never connect to unix sockets")


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float):
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = _clamp(timeout, self._deadline, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, budget), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _clamp(timeout: float | None, deadline: float, error: type[Exception]) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("webhook delivery deadline passed")
    return left if timeout is None else min(timeout, left)
