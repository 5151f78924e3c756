"""Webhooks over real sockets: a real HTTP(S) receiver on 127.0.0.1, signatures
checked with the Standard Webhooks reference library, SSRF refusals shown by a
receiver that would have been hit and saw nothing, and the delivery log on SQLite."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select
from standardwebhooks import Webhook

from celeriac.store import Database
from celeriac.webhooks import (
    DeliveryResult,
    UrlPolicy,
    WebhookDelivery,
    check_url,
    claim_attempt,
    deliver,
    event_id,
    event_payload,
    overdue,
    record_event,
    record_result,
)
from celeriac.webhooks.errors import UrlRefused
from celeriac.webhooks.ssrf import IPAddress
from celeriac.webhooks.transport import MAX_RESPONSE_BYTES, post
from tests.support.services import IN_CI, create_postgres_database, drop_postgres_database

SECRET = "whsec_" + base64.b64encode(b"celeriac-webhook-test-secret-32b").decode()
LOOPBACK_OK = UrlPolicy(allow_loopback=True)
PUBLIC_ONLY = UrlPolicy()
PAYLOAD = {"type": "task.completed", "timestamp": "2025-01-01T00:00:00+00:00", "data": {"x": 1}}

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)

    return route


def start_receiver(tls: ssl.SSLContext | None = None) -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.requests.append(Seen(self.path, headers, body))
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                receiver.routes.get(self.path, answer(204))(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    if tls is not None:
        tls.sni_callback = lambda _obj, name, _ctx: receiver.server_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return receiver


def stop_receiver(receiver: Receiver) -> None:
    receiver.release.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    stop_receiver(r)


def verified(seen: Seen) -> Any:
    """The payload, if the signature verifies with the reference library."""
    return Webhook(SECRET).verify(seen.body, seen.headers)


# -- delivery and signatures -------------------------------------------------------


def test_delivers_a_signed_post_that_the_reference_library_verifies(receiver: Receiver) -> None:
    result = deliver(
        receiver.url("/hook?team=7"),
        PAYLOAD,
        event_id="evt_1",
        secret=SECRET,
        policy=LOOPBACK_OK,
    )

    assert result.ok and not result.retryable and result.error is None
    assert result.status_code == 204 and result.address == "127.0.0.1"
    assert 0 < result.duration_ms < 5000
    [seen] = receiver.requests
    assert seen.path == "/hook?team=7"
    assert verified(seen) == PAYLOAD
    assert seen.headers["webhook-id"] == "evt_1"
    assert abs(int(seen.headers["webhook-timestamp"]) - dt.datetime.now(dt.UTC).timestamp()) < 5
    assert seen.headers["webhook-signature"].startswith("v1,")
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["host"] == f"127.0.0.1:{receiver.port}"


def test_a_signature_made_with_another_secret_does_not_verify(receiver: Receiver) -> None:
    other = "whsec_" + base64.b64encode(b"another-secret-of-thirty-two-by").decode()
    deliver(receiver.url(), PAYLOAD, event_id="evt_2", secret=other, policy=LOOPBACK_OK)
    with pytest.raises(Exception, match="signature"):
        verified(receiver.requests[0])


def test_the_same_url_is_refused_without_allow_loopback(receiver: Receiver) -> None:
    result = deliver(receiver.url(), PAYLOAD, event_id="evt_3", secret=SECRET, policy=PUBLIC_ONLY)

    assert not result.ok and not result.retryable
    assert result.error_code == "url_refused" and result.status_code is None
    assert "127.0.0.1" in (result.error or "") and "loopback" in (result.error or "")
    assert receiver.requests == []


def _resolvable(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 80)
    except OSError:
        return False
    return True


_LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    *(["ip6-localhost"] if _resolvable("ip6-localhost") else []),
]


@pytest.mark.parametrize("host", _LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_refused(receiver: Receiver, host: str) -> None:
    # Each of these reaches the receiver if the check lets it through.
    result = deliver(
        receiver.url(host=host), PAYLOAD, event_id="evt_4", secret=SECRET, policy=PUBLIC_ONLY
    )
    assert result.error_code == "url_refused" and not result.retryable, result
    assert receiver.requests == []


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "0",
        "[fd00:ec2::254]",
        "[fe80::1]",
        "[::]",
        "224.0.0.1",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
    ],
)
def test_private_and_special_addresses_are_refused_before_any_connection(host: str) -> None:
    result = deliver(
        f"http://{host}:9/hook", PAYLOAD, event_id="evt_5", secret=SECRET, policy=LOOPBACK_OK
    )
    assert result.error_code == "url_refused" and not result.retryable, result
    assert result.duration_ms < 1000


def test_an_allow_list_cidr_permits_loopback(receiver: Receiver) -> None:
    policy = UrlPolicy.from_entries(["127.0.0.1/32"])
    result = deliver(receiver.url(), PAYLOAD, event_id="evt_6", secret=SECRET, policy=policy)
    assert result.ok, result
    assert len(receiver.requests) == 1


def test_an_allow_listed_host_name_permits_what_it_resolves_to(receiver: Receiver) -> None:
    policy = UrlPolicy.from_entries(["localhost"])
    result = deliver(
        receiver.url(host="localhost"), PAYLOAD, event_id="evt_7", secret=SECRET, policy=policy
    )
    assert result.ok, result
    assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}"
    # The allow-list names the host, not the address: 127.0.0.1 itself stays refused.
    assert not deliver(receiver.url(), PAYLOAD, event_id="evt_7", secret=SECRET, policy=policy).ok


def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")]

    result = deliver(
        "https://mixed.test/hook",
        PAYLOAD,
        event_id="evt_8",
        secret=SECRET,
        policy=PUBLIC_ONLY,
        resolver=resolver,
    )
    assert result.error_code == "url_refused"
    assert "10.1.2.3" in (result.error or "")


def test_the_connection_goes_to_the_checked_address_not_a_second_dns_answer(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer is allowed, every later one points inward.
    The check resolves once; the connection must reuse that answer."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["127.0.0.2"] * 10)
    lookups: list[str] = []

    def rebinding_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(next(answers))
            return real(lookups[-1], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    policy = UrlPolicy.from_entries(["127.0.0.1/32"])
    url = receiver.url(host="rebind.test")

    result = deliver(url, PAYLOAD, event_id="evt_9", secret=SECRET, policy=policy)

    assert result.ok and result.address == "127.0.0.1", result
    assert lookups == ["127.0.0.1"]
    assert receiver.requests[0].headers["host"] == f"rebind.test:{receiver.port}"
    # What a second look-up would have said is outside the allow-list.
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.2"):
        check_url(url, policy)


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    elsewhere = start_receiver()
    try:
        receiver.routes["/hook"] = answer(302, headers={"Location": elsewhere.url("/landed")})
        result = deliver(
            receiver.url(), PAYLOAD, event_id="evt_10", secret=SECRET, policy=LOOPBACK_OK
        )
        assert not result.ok and not result.retryable
        assert result.status_code == 302 and result.error_code == "redirect"
        assert len(receiver.requests) == 1
        assert elsewhere.requests == []
    finally:
        stop_receiver(elsewhere)


# -- how outcomes are judged ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "code"),
    [
        (200, False, None),
        (500, True, "http_status"),
        (502, True, "http_status"),
        (410, False, "gone"),
        (400, False, "http_status"),
        (404, False, "http_status"),
        (408, True, "http_status"),
        (429, True, "http_status"),
    ],
)
def test_status_codes(receiver: Receiver, status: int, retryable: bool, code: str | None) -> None:
    receiver.routes["/hook"] = answer(status, b"receiver says no" if status >= 400 else b"")
    result = deliver(receiver.url(), PAYLOAD, event_id="evt_11", secret=SECRET, policy=LOOPBACK_OK)
    assert (result.ok, result.retryable, result.error_code) == (code is None, retryable, code)
    assert result.status_code == status
    if status >= 400:
        assert result.error == f"HTTP {status}: receiver says no" or status == 410


def test_429_retry_after_is_reported(receiver: Receiver) -> None:
    receiver.routes["/hook"] = answer(429, headers={"Retry-After": "7"})
    result = deliver(receiver.url(), PAYLOAD, event_id="evt_12", secret=SECRET, policy=LOOPBACK_OK)
    assert result.retryable and result.retry_after_s == 7.0


def test_a_slow_receiver_times_out_and_is_retryable(receiver: Receiver) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        receiver.release.wait(10)
        answer(200)(handler)

    receiver.routes["/hook"] = slow
    result = deliver(
        receiver.url(), PAYLOAD, event_id="evt_13", secret=SECRET, policy=LOOPBACK_OK, timeout_s=0.5
    )
    assert not result.ok and result.retryable and result.error_code == "timeout"
    assert result.duration_ms < 2000


def test_a_receiver_that_drips_headers_is_cut_off_at_the_total_deadline(
    receiver: Receiver,
) -> None:
    """Each byte comes well within the read timeout; only the overall deadline ends it."""

    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            if receiver.release.wait(0.1):
                return
            handler.wfile.write(b"X-Drip: x\r\n")
            handler.wfile.flush()

    receiver.routes["/hook"] = drip
    result = deliver(
        receiver.url(), PAYLOAD, event_id="evt_14", secret=SECRET, policy=LOOPBACK_OK, timeout_s=1
    )
    assert result.error_code == "timeout" and result.retryable
    assert 900 < result.duration_ms < 2500


def test_a_closed_port_is_a_retryable_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    result = deliver(
        f"http://127.0.0.1:{port}/", PAYLOAD, event_id="evt_15", secret=SECRET, policy=LOOPBACK_OK
    )
    assert result.error_code == "connect_error" and result.retryable


def test_the_response_body_is_read_up_to_a_cap(receiver: Receiver) -> None:
    receiver.routes["/hook"] = answer(500, b"x" * (4 * MAX_RESPONSE_BYTES))
    target = check_url(receiver.url(), LOOPBACK_OK)
    response = post(target, b"{}", {}, connect_timeout_s=5, total_timeout_s=10)
    assert response.status == 500 and len(response.body) == MAX_RESPONSE_BYTES
    result = deliver(receiver.url(), PAYLOAD, event_id="evt_16", secret=SECRET, policy=LOOPBACK_OK)
    assert len(result.error or "") < 250


# -- TLS: SNI and certificate checked against the name, connection to the address --


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, ssl.SSLContext]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    r = start_receiver(tls=server_ctx)
    yield r, ssl.create_default_context(cafile=str(cert_path))
    stop_receiver(r)


def test_https_uses_the_name_for_sni_and_verification(
    tls_receiver: tuple[Receiver, ssl.SSLContext],
) -> None:
    receiver, client_ctx = tls_receiver

    def resolver(host: str, port: int) -> list[IPAddress]:
        assert host == "hooks.test"
        return [ipaddress.ip_address("127.0.0.1")]

    result = deliver(
        f"https://hooks.test:{receiver.port}/hook",
        PAYLOAD,
        event_id="evt_17",
        secret=SECRET,
        policy=LOOPBACK_OK,
        resolver=resolver,
        ssl_context=client_ctx,
    )

    assert result.ok and result.address == "127.0.0.1", result
    assert receiver.server_names == ["hooks.test"]
    assert receiver.requests[0].headers["host"] == f"hooks.test:{receiver.port}"
    assert verified(receiver.requests[0]) == PAYLOAD


def test_https_to_the_bare_address_fails_certificate_verification(
    tls_receiver: tuple[Receiver, ssl.SSLContext],
) -> None:
    receiver, client_ctx = tls_receiver
    result = deliver(
        f"https://127.0.0.1:{receiver.port}/hook",
        PAYLOAD,
        event_id="evt_18",
        secret=SECRET,
        policy=LOOPBACK_OK,
        ssl_context=client_ctx,
    )
    assert result.error_code == "connect_error" and result.retryable
    assert "certificate" in (result.error or "").lower()
    assert receiver.requests == []


# -- the delivery log ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    dropped: str | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/webhooks.db"
    else:
        created = create_postgres_database()
        if created is None:
            if IN_CI:
                pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
            pytest.skip("PostgreSQL not available locally")
        url, dropped = created
    database = Database(url)
    database.create_schema()
    yield database
    database.dispose()
    if dropped is not None:
        drop_postgres_database(dropped)


def _rows(db: Database) -> int:
    with db.reader() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


def _record(db: Database, url: str = "https://example.com/hook") -> tuple[str, bool]:
    return record_event(
        db,
        event_id=event_id("run1", "task.completed"),
        run_id="run1",
        url=url,
        event_type="task.completed",
        payload=PAYLOAD,
    )


def _result(ok: bool, retryable: bool, status: int | None = None) -> DeliveryResult:
    error = None if ok else "boom"
    return DeliveryResult(ok, retryable, status, error, 1.0, None if ok else "http_status")


def test_recording_an_event_twice_for_one_url_keeps_one_row(db: Database) -> None:
    first, created = _record(db)
    again, created_again = _record(db)
    other, created_other = _record(db, "https://example.org/hook")

    assert created and not created_again and created_other
    assert again == first and other != first
    assert _rows(db) == 2


def test_concurrent_recording_of_one_event_makes_one_row(db: Database) -> None:
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _record(db), range(8)))
    assert len({delivery_id for delivery_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert _rows(db) == 1


def test_a_retryable_failure_stays_pending_then_delivers(db: Database) -> None:
    delivery_id, _ = _record(db)

    claimed = claim_attempt(db, delivery_id)
    assert claimed is not None and claimed.attempts == 1 and claimed.payload == PAYLOAD
    assert claim_attempt(db, delivery_id) is None  # leased by the attempt in flight

    recorded = record_result(db, delivery_id, _result(False, True, 503))
    assert recorded.status == "pending" and recorded.retry_in_s is not None
    assert 0 < recorded.retry_in_s <= 1.0

    claimed = claim_attempt(db, delivery_id)
    assert claimed is not None and claimed.attempts == 2
    assert record_result(db, delivery_id, _result(True, False, 200)).status == "delivered"

    assert claim_attempt(db, delivery_id) is None
    # A late duplicate result never changes a delivered row.
    assert record_result(db, delivery_id, _result(False, False, 400)).status == "delivered"
    with db.reader() as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None
        assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
        assert row.delivered_at is not None and row.last_error is None


def test_a_permanent_failure_fails_at_once(db: Database) -> None:
    delivery_id, _ = _record(db)
    assert claim_attempt(db, delivery_id) is not None
    recorded = record_result(db, delivery_id, _result(False, False, 410))
    assert (recorded.status, recorded.retry_in_s) == ("failed", None)
    assert claim_attempt(db, delivery_id) is None


def test_retries_stop_after_the_last_attempt(db: Database) -> None:
    delivery_id, _ = _record(db)
    for attempt in range(1, 4):
        assert claim_attempt(db, delivery_id, max_attempts=3) is not None
        recorded = record_result(db, delivery_id, _result(False, True, 500), max_attempts=3)
        assert recorded.status == ("failed" if attempt == 3 else "pending")
    assert claim_attempt(db, delivery_id, max_attempts=3) is None


def test_an_expired_lease_frees_the_delivery_and_spent_attempts_fail_it(db: Database) -> None:
    delivery_id, _ = _record(db)
    assert claim_attempt(db, delivery_id, lease_s=0) is not None  # its worker "crashed"
    assert claim_attempt(db, delivery_id, lease_s=0, max_attempts=2) is not None
    assert claim_attempt(db, delivery_id, max_attempts=2) is None
    with db.reader() as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None and row.status == "failed"


def test_overdue_finds_lost_retries_and_crashed_attempts(db: Database) -> None:
    delivery_id, _ = _record(db)
    assert overdue(db, grace_s=-1) == [delivery_id]  # recorded, never sent
    assert claim_attempt(db, delivery_id, lease_s=0) is not None  # then its worker dies
    assert overdue(db, grace_s=-1) == [delivery_id]
    assert claim_attempt(db, delivery_id) is not None
    assert overdue(db, grace_s=0) == []  # leased: in flight
    # A retry due in a minute: not overdue however slowly this test runs.
    failed = dataclasses.replace(_result(False, True, 500), retry_after_s=60)
    assert record_result(db, delivery_id, failed).status == "pending"
    assert overdue(db, grace_s=0) == []  # its retry is not due yet
    assert overdue(db, grace_s=-3600) == [delivery_id]
    assert claim_attempt(db, delivery_id) is not None
    record_result(db, delivery_id, _result(True, False, 200))
    assert overdue(db, grace_s=-3600) == []


def test_end_to_end_from_a_run_document_to_the_receiver(db: Database, receiver: Receiver) -> None:
    run_document = {
        "task_id": "run42",
        "status": "completed",
        "result": "4",
        "error": None,
        "usage": {"input_tokens": 10, "output_tokens": 2, "cost_usd": 0.0001},
        "model": "claude-sonnet-4",
        "agent": "default",
        "created_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:00:05+00:00",
        "metadata": {"api_key": "sk-do-not-send"},
        "steps": [{"arguments": {"token": "sk-do-not-send"}}],
    }
    eid = event_id("run42", "task.completed")
    payload = event_payload(run_document, "task.completed")
    delivery_id, _ = record_event(
        db,
        event_id=eid,
        run_id="run42",
        url=receiver.url(),
        event_type="task.completed",
        payload=payload,
    )
    claimed = claim_attempt(db, delivery_id)
    assert claimed is not None
    result = deliver(
        claimed.url, claimed.payload, event_id=claimed.event_id, secret=SECRET, policy=LOOPBACK_OK
    )
    assert record_result(db, delivery_id, result).status == "delivered"

    [seen] = receiver.requests
    assert seen.headers["webhook-id"] == "evt_run42_task_completed"
    body = verified(seen)
    assert body["type"] == "task.completed"
    assert body["timestamp"] == "2025-01-01T00:00:05+00:00"
    assert body["data"]["task_id"] == "run42" and body["data"]["result"] == "4"
    assert b"sk-do-not-send" not in seen.body
