"""The SSRF guard: every connection we open to a caller-supplied URL goes to a public address.

Host names are filtered when resolved, and the IP of every socket is checked again (aiohttp's
`socket_factory`), so the guard covers names, literal IPs and every redirect hop. Loopback,
private, link-local (cloud metadata), CGNAT, multicast, reserved and other non-global addresses
are refused unless an allowlisted CIDR admits them. At registration, a URL whose host is a
literal blocked address is refused; at connect time a refusal is `DestinationRefused`, which
ends a poll as `error` and fails a webhook at once.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from client.upstream import DestinationRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(DestinationRefused):
    """A connection to a blocked address was refused (a terminal error for polls and webhooks)."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EACCES, f"blocked by the SSRF guard: {address} is not public")


class GuardedResolver(AbstractResolver):
    """Drops blocked addresses from what a host name resolves to; refuses the name if none is
    left (so a name with public and private addresses only ever connects to the public ones)."""

    def __init__(self, allowed: Sequence[Network], resolver: AbstractResolver | None) -> None:
        self.allowed = allowed
        self.resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.resolver.resolve(host, port, family)
        admitted = [
            result
            for result in results
            if not is_blocked(ipaddress.ip_address(result["host"]), self.allowed)
        ]
        if not admitted:
            raise BlockedAddress(f"{host} ({', '.join(r['host'] for r in results)})")
        return admitted

    async def close(self) -> None:
        await self.resolver.close()


# IPv6 forms that carry an IPv4 address a gateway may reach (NAT64's well-known prefix), and
# deprecated ranges that Python still calls global (IPv4-compatible ::a.b.c.d, site-local).
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
DEPRECATED_V6 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("fec0::/10"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_blocked(ip: IPAddress, allowed: Sequence[Network] = ()) -> bool:
    if any(ip in network for network in allowed if network.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_blocked(embedded, allowed)
        if any(ip in network for network in DEPRECATED_V6):
            return True
    return not ip.is_global or ip.is_multicast


def blocked_literal(url: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why the URL's host, if it is a literal IP (or localhost), is refused; else None."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not is_blocked(ip, allowed):
        return None
    return f"{host} is not a public address; allow its network with VTW_ALLOWED_NETWORKS"


def guarded_connector(
    allowed: Sequence[Network] = (), resolver: AbstractResolver | None = None, **kwargs: Any
) -> aiohttp.TCPConnector:
    """A TCPConnector that refuses to connect to blocked addresses: names are filtered when
    resolved, and every socket (literal IPs and redirect hops included) is checked again."""

    def socket_factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if is_blocked(ipaddress.ip_address(address[0]), allowed):
            raise BlockedAddress(address[0])
        return socket.socket(family=family, type=type_, proto=proto)

    return aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed, resolver), socket_factory=socket_factory, **kwargs
    )
