"""The pure parts of webhooks: which URLs pass the SSRF check (literal addresses and
an injected resolver, so no DNS), signatures against the spec, backoff, payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time

import pytest
from standardwebhooks import Webhook

from celeriac.errors import InvalidRequest
from celeriac.webhooks import (
    InvalidSecret,
    UnresolvableHost,
    UrlPolicy,
    UrlRefused,
    check_url,
    event_id,
    event_payload,
    event_type_for,
    next_delay,
    signature_headers,
)
from celeriac.webhooks.delivery import parse_retry_after
from celeriac.webhooks.ssrf import IPAddress, Resolver, classify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def resolves_to(*addresses: str) -> Resolver:
    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolver


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.255.255.254/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[0:0:0:0:0:ffff:7f00:1]/", "loopback"),
        ("http://[::127.0.0.1]/", "loopback"),  # IPv4-compatible
        ("http://[64:ff9b::127.0.0.1]/", "loopback"),  # NAT64
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://017700000001/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://127.0.0.1./", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://172.31.255.255/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://0xa9fea9fe/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "unique local"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://0.1.2.3/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://255.255.255.255/", "reserved"),
        ("http://192.0.2.1/", "documentation"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://[2001:db8::1]/", "documentation"),
    ],
)
def test_non_public_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=reason):
        check_url(url, UrlPolicy(), resolver=resolves_to("8.8.8.8"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://8.8.8.8/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://8.8.8.8/", "http or https"),
        ("http:///path", "no host"),
        ("http://user:pw@8.8.8.8/", "credentials"),
        ("http://8.8.8.8@127.0.0.1/", "credentials"),
        ("http://8.8.8.8:0/", "port 0"),
        ("http://8.8.8.8:99999/", "invalid"),
        ("http://08.0.0.1/", "invalid IPv4"),
        ("http://1.2.3.4.5/", "invalid IPv4"),
        ("http://exa mple.com/", "invalid host"),
        ("http://[::1/", "invalid"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(UrlRefused, match=message):
        check_url(url, UrlPolicy(), resolver=resolves_to("8.8.8.8"))


def test_a_refused_url_is_invalid_input_for_the_api() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url("http://10.0.0.1/", UrlPolicy())
    assert caught.value.code == "webhook_url_refused"
    assert caught.value.field == "webhook_url"


def test_public_targets_pass_with_every_checked_address() -> None:
    target = check_url(
        "https://Hooks.Example.com:8443/in?x=a b#frag",
        UrlPolicy(),
        resolver=resolves_to("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"),
    )
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert target.path == "/in?x=a%20b"
    assert target.host_header == "hooks.example.com:8443"
    assert [str(a) for a in target.addresses] == [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
    ]
    assert check_url("http://[2606:4700:4700::1111]/", UrlPolicy()).host_header == (
        "[2606:4700:4700::1111]"
    )
    assert check_url("http://[::ffff:8.8.8.8]/", UrlPolicy()).addresses == (
        ipaddress.ip_address("::ffff:8.8.8.8"),
    )


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    with pytest.raises(UrlRefused, match=r"internal\.test \(10\.0\.0\.7\)"):
        check_url("http://internal.test/", UrlPolicy(), resolver=resolves_to("8.8.8.8", "10.0.0.7"))
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("http://six.test/", UrlPolicy(), resolver=resolves_to("::1"))


def test_localhost_resolved_by_the_system_is_refused() -> None:
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("http://localhost:8080/", UrlPolicy())


def test_an_unresolvable_name_is_not_a_refusal() -> None:
    with pytest.raises(UnresolvableHost):
        check_url("http://nothing.invalid/", UrlPolicy())
    with pytest.raises(UnresolvableHost):
        check_url("http://empty.test/", UrlPolicy(), resolver=resolves_to())


def test_allow_loopback_admits_loopback_only() -> None:
    policy = UrlPolicy(allow_loopback=True)
    assert check_url("http://127.0.0.1:5000/", policy).port == 5000
    assert check_url("http://[::1]/", policy).host == "::1"
    assert check_url("http://2130706433/", policy).host == "127.0.0.1"
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[fe80::1]/"):
        with pytest.raises(UrlRefused):
            check_url(url, policy)


def test_allow_list_entries() -> None:
    policy = UrlPolicy.from_entries(
        [" 10.1.0.0/16 ", "Hooks.Internal.", "*.corp.example", "fd12::/16", ""]
    )
    assert [str(n) for n in policy.allow_networks] == ["10.1.0.0/16", "fd12::/16"]
    assert policy.allow_hosts == ("hooks.internal", "*.corp.example")
    private = resolves_to("10.9.9.9")

    assert check_url("http://10.1.2.3/", policy)
    assert check_url("http://[::ffff:10.1.2.3]/", policy)  # the same address, mapped
    assert check_url("http://[fd12::5]/", policy)
    assert check_url("http://hooks.internal/", policy, resolver=private)
    assert check_url("http://a.b.corp.example/", policy, resolver=private)
    for url in ("http://10.2.0.1/", "http://corp.example/", "http://xcorp.example/"):
        with pytest.raises(UrlRefused):
            check_url(url, policy, resolver=private)
    with pytest.raises(ValueError, match="not a CIDR"):
        UrlPolicy.from_entries(["not a host!"])


def test_classify_public_addresses() -> None:
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert classify(ipaddress.ip_address(address)) is None


# -- signatures -------------------------------------------------------------------------


def test_signature_follows_the_spec_and_verifies_with_the_reference_library() -> None:
    body = '{"type":"task.completed","data":{"r":"é"}}'
    now = int(time.time())
    headers = signature_headers(SECRET, msg_id="evt_x", timestamp=now, body=body)

    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"evt_x.{now}.{body}".encode(), hashlib.sha256).digest()
    assert headers == {
        "webhook-id": "evt_x",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    assert Webhook(SECRET).verify(body.encode(), headers) == {
        "type": "task.completed",
        "data": {"r": "é"},
    }


def test_a_stale_timestamp_fails_verification() -> None:
    stale = int(time.time()) - 600
    headers = signature_headers(SECRET, msg_id="evt_x", timestamp=stale, body="{}")
    with pytest.raises(Exception, match="too old"):
        Webhook(SECRET).verify("{}", headers)


@pytest.mark.parametrize(
    "secret",
    ["", "abc", "whsec_", "whsec_not*base64!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        signature_headers(secret, msg_id="evt", timestamp=0, body="{}")


# -- backoff and Retry-After --------------------------------------------------------------


def test_next_delay_doubles_with_jitter_up_to_five_minutes() -> None:
    for attempt, full in [(1, 1), (2, 2), (3, 4), (6, 32), (9, 256), (10, 300), (30, 300)]:
        for _ in range(20):
            assert full / 2 <= next_delay(attempt) <= full
    assert next_delay(1, retry_after_s=30) == 30
    assert next_delay(1, retry_after_s=86400) == 300  # honoured within the cap


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490) == 0


# -- events --------------------------------------------------------------------------------


def test_event_ids_are_stable_per_run_and_type() -> None:
    assert event_id("abc", "task.failed") == "evt_abc_task_failed"
    assert event_id("abc", "task.failed") == event_id("abc", "task.failed")
    assert event_type_for("completed") == "task.completed"
    assert event_type_for("cancelled") == "task.cancelled"
    assert event_type_for("running") is None


def test_event_payload_picks_named_fields_only() -> None:
    document = {
        "task_id": "r1",
        "status": "failed",
        "result": None,
        "error": {"code": "max_steps", "message": "too many steps"},
        "usage": {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0.0},
        "model": "m",
        "agent": "a",
        "created_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:01:00+00:00",
        "metadata": {"secret": "x"},
        "steps": [{"arguments": {"api_key": "x"}}],
        "budget_usd": 1.0,
    }
    payload = event_payload(document, "task.failed")
    assert payload["type"] == "task.failed"
    assert payload["timestamp"] == "2025-01-01T00:01:00+00:00"
    assert set(payload["data"]) == {
        "task_id",
        "status",
        "result",
        "error",
        "usage",
        "model",
        "agent",
        "created_at",
        "finished_at",
    }
    assert payload["data"]["error"] == {"code": "max_steps", "message": "too many steps"}
    with pytest.raises(ValueError):
        event_payload(document, "task.exploded")  # type: ignore[arg-type]
