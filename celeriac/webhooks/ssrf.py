"""Which webhook URLs Celeriac may call, and the addresses it may connect to.

A webhook URL is written by whoever submits a task, so without a check it would let
them make Celeriac's workers call anything those workers can reach: Redis, the
database, the cloud metadata service. A URL passes only if it is http(s) and every
address its host resolves to is public (or explicitly allowed). The addresses are
returned with the verdict, and the transport connects to those and never resolves
the name again, so a second DNS answer (rebinding) cannot move the request inward.

Bypasses this has to withstand: other spellings of an address (``2130706433``,
``0x7f000001``, ``0177.0.0.1``, ``127.1``), IPv6 forms that carry an IPv4 address
(``[::ffff:127.0.0.1]``, NAT64, 6to4), names that resolve to private addresses, and
names that resolve to a public and a private address at once.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from celeriac.webhooks.errors import UnresolvableHost, UrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> every address the host resolves to; injectable for tests.
Resolver = Callable[[str, int], Sequence[IPAddress]]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Ranges that are not the public internet, named for the refusal message. The
# standard library's flags say much the same, but their tables changed between
# 3.11 patch releases; this one does not move under us.
_V4_BLOCKED = [
    (ipaddress.IPv4Network(cidr), name)
    for cidr, name in [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
]
_V6_BLOCKED = [
    (ipaddress.IPv6Network(cidr), name)
    for cidr, name in [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

# A host whose last label is a number is an IPv4 address in some spelling: no
# top-level domain is numeric, and resolvers parse "0x7f.1" as 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclass(frozen=True)
class UrlPolicy:
    """Exceptions to "public addresses only", from configuration.

    ``allow_networks`` admits addresses inside them; ``allow_hosts`` admits names
    (``hooks.internal``, or ``*.corp.example`` for its subdomains) whatever they
    resolve to, which trusts their DNS; ``allow_loopback`` is for development."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    allow_loopback: bool = False

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, allow_loopback: bool = False) -> UrlPolicy:
        """Build a policy from strings such as ``["10.1.0.0/16", "hooks.internal"]``."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry[2:] if entry.startswith("*.") else entry
            if not _HOST_NAME.fullmatch(name.rstrip(".")):
                raise ValueError(f"not a CIDR or host name: {raw!r}")
            hosts.append(entry.rstrip("."))
        return cls(tuple(networks), tuple(hosts), allow_loopback)

    def allows_host(self, host: str) -> bool:
        for pattern in self.allow_hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be called, or None if it may."""
        embedded = _embedded_ipv4(address)
        candidates = [a for a in (address, embedded) if a is not None]
        if any(a in net for net in self.allow_networks for a in candidates):
            return None
        category = classify(address)
        if category == "loopback" and self.allow_loopback:
            return None
        return category


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect, and what to say once connected."""

    scheme: str  # "http" | "https"
    host: str  # lower case, IDNA-encoded; an IP literal in its canonical form
    port: int
    path: str  # path and query, percent-encoded, e.g. "/hooks?team=1"
    addresses: tuple[IPAddress, ...]  # every one checked; connect to these only

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def classify(address: IPAddress) -> str | None:
    """The kind of non-public address this is, or None if it is public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return classify(embedded)
    if address in _METADATA:
        return "link-local (cloud metadata service)"
    table = _V4_BLOCKED if isinstance(address, ipaddress.IPv4Address) else _V6_BLOCKED
    for network, name in table:
        if address in network:
            return name
    # Belt and braces for ranges registered after this table was written.
    return None if address.is_global else "not globally routable"


def check_url(url: str, policy: UrlPolicy, *, resolver: Resolver | None = None) -> Target:
    """Parse ``url``, resolve its host and check every address, or raise
    ``UrlRefused`` (permanent) or ``UnresolvableHost`` (may pass later)."""
    scheme, host, port, path = parse_url(url)
    literal = _literal_address(host)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
        host = str(literal)
    else:
        addresses = tuple(dict.fromkeys((resolver or system_resolver)(host, port)))
        if not addresses:
            raise UnresolvableHost(f"{host} resolves to no address")
    if literal is None and policy.allows_host(host):
        return Target(scheme, host, port, path, addresses)
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            written = host if literal is None else url_host(url)
            what = f"{address}" if written == str(address) else f"{written} ({address})"
            raise UrlRefused(
                f"webhook target {what} is not a public address ({reason})",
                field="webhook_url",
            )
    return Target(scheme, host, port, path, addresses)


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, without any DNS look-up."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"invalid webhook URL: {exc}", field="webhook_url") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused("webhook URLs must be http or https", field="webhook_url")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("webhook URLs may not carry credentials", field="webhook_url")
    if port == 0:
        raise UrlRefused("webhook URL has port 0", field="webhook_url")
    host = _normalise_host(parts.hostname or "")
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port, path


def url_host(url: str) -> str:
    """The host as written in ``url``, for messages and logs (never the path or
    query, which may carry a receiver's token)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every IPv4 and IPv6 address ``host`` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"cannot resolve {host}: {exc}") from None
    return [
        ipaddress.ip_address(sockaddr[0])
        for family, _, _, _, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


def _normalise_host(host: str) -> str:
    host = host.rstrip(".")
    if not host:
        raise UrlRefused("webhook URL has no host", field="webhook_url")
    if ":" in host:  # IPv6, brackets already removed by urlsplit
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UrlRefused(f"invalid IPv6 address {host!r}", field="webhook_url") from None
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UrlRefused(f"invalid host name {host!r}", field="webhook_url") from None
    if not _HOST_NAME.fullmatch(host):
        raise UrlRefused(f"invalid host name {host!r}", field="webhook_url")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(host)))
        except OSError:
            raise UrlRefused(f"invalid IPv4 address {host!r}", field="webhook_url") from None
    return host


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it stands for one."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (address in _NAT64 or address in _V4_COMPATIBLE) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
