"""Where modelplane may connect on a user's behalf: one check, at creation and at every connection.

A REMOTE_API model's URL and an S3 target's endpoint are chosen by a user, and modelplane then
connects there with a stored secret (the API key, signed S3 requests). Without a rule, that is
a way to make the server talk to what only it can reach: the cloud metadata service (instance
credentials), its own loopback services, the cluster's private network. The rule lives here, in
one :class:`OutboundPolicy`, and is applied twice with the same code:

* at creation (``services.validation``): the URL's host is normalised and, if it is an address,
  checked; a name is resolved and every address it resolves to is checked. The user gets a
  ``ValidationError`` naming the field, and nothing is written.
* at every connection: :class:`GuardedResolver` is the resolver of every connection pool that
  talks to user-given URLs (the gateway's REMOTE_API pool, the inference controller's probe,
  the S3 client's pool), and :class:`GuardedConnector` also checks literal addresses, which
  aiohttp never hands to a resolver. So a name that resolved to a public address at creation
  and to ``127.0.0.1`` later (DNS rebinding), or that did not resolve at creation at all, is
  refused when the connection is made: the address checked is the address connected to. DNS
  answers are not cached by these pools (each new connection resolves and checks again; kept-
  alive connections are reused as they are).

Normalisation sees every spelling of an address the way the C library does when it connects:
brackets, case and trailing dots; IPv4 in decimal, hexadecimal, octal or short form (``2130706433``,
``0x7f.1``, ``0177.0.0.1``, ``127.1``, read with ``inet_aton``); IPv6 forms that carry an IPv4
address (mapped ``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``), whose IPv4 address is checked as
well; zone ids (``fe80::1%eth0``). A host that looks numeric but is no address is refused
rather than left to a resolver's interpretation.

Always refused: unspecified (``0.0.0.0/8``, ``::``), link-local (``169.254.0.0/16``,
``fe80::/10``) and the cloud metadata addresses and names, multicast, and reserved/broadcast
(``240.0.0.0/4``). Refused unless an ``allowed_networks`` entry contains the address:
loopback (``127.0.0.0/8``, ``::1``) and private ranges (RFC 1918, CGNAT ``100.64.0.0/10``,
``198.18.0.0/15``, ``192.0.0.0/24``, ULA ``fc00::/7``, site-local ``fec0::/10``, local-use
NAT64 ``64:ff9b:1::/48``). A host named in ``allowed_hosts`` is trusted whatever it resolves
to: the operator vouches for it (an in-cluster model server, a MinIO on a private network).

What this does not reach: processes that are not modelplane's own code connect by themselves
-- a LITELLM_PROXY engine forwarding to a REMOTE_API URL, the ``aws s3 sync`` step of an
inference pod -- so for them only the check at creation holds (in a cluster, an egress
NetworkPolicy is the tool). Behind an HTTP proxy (botocore honours ``HTTPS_PROXY`` for S3) the
pool connects to the proxy, which is then the host checked (list it in ``allowed_hosts``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Lookup = Callable[[str, int, int], Awaitable[list[tuple[int, str]]]]
"""``(host, port, family) -> [(family, numeric address), ...]``: how names are resolved (the
system resolver unless a test injects its own)."""

LOOKUP_SECONDS = 5.0

METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


ALWAYS_REFUSED: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (_networks("0.0.0.0/8", "::/128"), "an unspecified address"),
    (_networks("169.254.0.0/16", "fe80::/10"), "a link-local address"),
    (_networks("224.0.0.0/4", "ff00::/8"), "a multicast address"),
    (_networks("240.0.0.0/4"), "a reserved or broadcast address"),
)
LOOPBACK = _networks("127.0.0.0/8", "::1/128")
PRIVATE = _networks(
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "192.0.0.0/24",
    "fc00::/7",
    "fec0::/10",
    "64:ff9b:1::/48",
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class AddressRefused(OSError):
    """An outbound host or address is not allowed; the message says which and why."""


def normalize_host(host: str) -> str:
    """Lowercase, without brackets or (for names and IPv4) trailing dots."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.rstrip(".") if ":" not in text else text


def parse_address(host: str) -> IPAddress | None:
    """The address a host names if it is an address in any spelling; None for a name.

    Raises :class:`AddressRefused` for a host that looks numeric but is no address (what a
    resolver would make of it is not worth guessing)."""
    text = normalize_host(host)
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise AddressRefused(f"{host!r} is not a valid IPv6 address") from None
    if not _NUMERIC_LABEL.match(text.rsplit(".", 1)[-1]):
        return None  # a name (WHATWG's rule: a host whose last label is a number is IPv4)
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise AddressRefused(f"{host!r} is not a valid IPv4 address") from None


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, SIIT, compatible, NAT64, 6to4,
    Teredo server and client); empty for IPv4 or plain IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIIT or address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _matches(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which hosts and addresses user-given URLs may reach (see the module docstring)."""

    allowed_hosts: frozenset[str] = frozenset()
    """Names (or literal addresses) trusted whatever they resolve to, normalised."""
    allowed_networks: tuple[IPNetwork, ...] = ()
    """Loopback or private networks that may be reached."""
    lookup: Lookup | None = field(default=None, compare=False)
    """The resolver; None means the system's (``getaddrinfo``)."""

    @classmethod
    def of(
        cls,
        *,
        hosts: Sequence[str] = (),
        networks: Sequence[str | IPNetwork] = (),
        lookup: Lookup | None = None,
    ) -> OutboundPolicy:
        """A policy from setting values (host names, CIDR strings)."""
        return cls(
            allowed_hosts=frozenset(_allowed_form(h) for h in hosts if h.strip()),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            lookup=lookup,
        )

    def allows_host(self, host: str) -> bool:
        """True for a host the operator vouches for (``allowed_hosts``)."""
        return _allowed_form(host) in self.allowed_hosts

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or None when it may."""
        bare = ipaddress.ip_address(str(address).split("%", 1)[0])
        for inner in embedded_ipv4(bare):
            reason = self.refusal(inner)
            if reason is not None:
                return f"{reason} (inside {bare})"
        if bare in METADATA_ADDRESSES:
            return f"a cloud metadata address ({bare})"
        refused = [*ALWAYS_REFUSED]
        if not _matches(bare, self.allowed_networks):
            refused += [(LOOPBACK, "a loopback address"), (PRIVATE, "a private address")]
        for networks, reason in refused:
            if _matches(bare, networks):
                return f"{reason} ({bare})"
        return None

    def check_address(self, address: IPAddress) -> None:
        """Raise :class:`AddressRefused` unless ``address`` may be reached."""
        reason = self.refusal(address)
        if reason is not None:
            raise AddressRefused(f"points at {reason}")

    def check_host(self, host: str) -> IPAddress | None:
        """Check a URL's host without resolving it: a metadata name or a refused address
        raises :class:`AddressRefused`; returns the address when the host is one."""
        if self.allows_host(host):
            return None
        if normalize_host(host) in METADATA_NAMES:
            raise AddressRefused(f"points at a cloud metadata service ({normalize_host(host)})")
        address = parse_address(host)
        if address is not None:
            self.check_address(address)
        return address

    async def resolve(
        self, host: str, port: int, family: int = socket.AF_UNSPEC
    ) -> list[tuple[int, str]]:
        """The addresses to connect to for ``host``, every one checked (any refused one
        refuses the host: a resolver's answer order is not a defence)."""
        address = self.check_host(host)
        if address is not None:
            return [(_family(address), str(address))]
        lookup = self.lookup or system_lookup
        async with asyncio.timeout(LOOKUP_SECONDS):
            found = await lookup(normalize_host(host), port, family)
        if not self.allows_host(host):
            for _, text in found:
                self.check_address(ipaddress.ip_address(text))
        return found

    async def check_url(self, url: str) -> None:
        """Check a URL's host and every address its name resolves to now; a name that does
        not resolve (here, now) passes: the connection checks it again."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise AddressRefused(f"{url!r} has an invalid port") from None
        try:
            await self.resolve(host, port)
        except AddressRefused:
            raise
        except (OSError, TimeoutError):
            return


def _allowed_form(host: str) -> str:
    text = normalize_host(host)
    try:
        address = parse_address(text)
    except AddressRefused:
        return text
    return str(address) if address is not None else text


def _family(address: IPAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def system_lookup(host: str, port: int, family: int) -> list[tuple[int, str]]:
    """``getaddrinfo`` on the loop's executor: every stream address of ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=family, type=socket.SOCK_STREAM
    )
    seen: list[tuple[int, str]] = []
    for info_family, _type, _proto, _canon, sockaddr in infos:
        entry = (int(info_family), str(sockaddr[0]))
        if entry not in seen:
            seen.append(entry)
    return seen


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for user-given URLs: every answer is checked by the policy."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve and check; :class:`AddressRefused` (an ``OSError``) when refused."""
        found = await self._policy.resolve(host, port, family)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=address_family,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address_family, address in found
        ]

    async def close(self) -> None:
        """Nothing to release."""


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector for user-given URLs: names go through :class:`GuardedResolver` on every
    new connection (no DNS cache) and literal addresses, which aiohttp does not resolve, are
    checked here before connecting."""

    def __init__(self, policy: OutboundPolicy, **options: Any) -> None:
        super().__init__(resolver=GuardedResolver(policy), use_dns_cache=False, **options)
        self._policy = policy

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109  aiohttp's signature
    ) -> Connection:
        """Refuse a literal address the policy refuses, then connect as usual."""
        host = req.url.raw_host or ""
        try:
            self._policy.check_host(host)
        except AddressRefused as exc:
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from None
        return await super().connect(req, traces, timeout)


def connector_args(policy: OutboundPolicy) -> dict[str, Any]:
    """aiobotocore ``connector_args`` giving an S3 client's pool the guarded resolver (its
    endpoint's literal address, if it is one, is checked by the client: see ``integrations.s3``)."""
    return {"resolver": GuardedResolver(policy), "use_dns_cache": False}
