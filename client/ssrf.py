"""The SSRF guard: every connection we open to a caller-supplied URL goes to a public address.

Host names are filtered when resolved, and the IP of every socket is checked again (aiohttp's
`socket_factory`), so the guard covers names, literal IPs and every redirect hop. At
registration, a URL whose host is a literal blocked address is refused; at connect time a
refusal is `DestinationRefused`, which ends a poll as `error` and fails a webhook at once.

What is blocked is an explicit deny list transcribed from the IANA IPv4 and IPv6
Special-Purpose Address Registries (RFC 6890, RFC 8190), not the running Python's
`ip.is_global`, which differs between versions and misses ranges (local-use NAT64, SIIT,
192.0.0.8, 3fff::/20, 5f00::/16...). The tables below cite each entry. Deliberate choices:

- We guard a server-side fetcher, so whole special-purpose blocks are refused, including the
  few entries the registry marks globally reachable inside them (192.0.0.9 and .10 PCP/TURN
  anycast, AS112 and AMT blocks, 2001:1::1-3, 2001:3::/32, 2001:4:112::/48, ORCHIDv2, DETs):
  none of them serves HTTP status endpoints or webhook receivers.
- IPv6 outside 2000::/3 (global unicast) is refused whole, except two prefixes judged by the
  IPv4 they carry: IPv4-mapped ::ffff:0:0/96 (the socket reaches that IPv4 itself) and the
  well-known NAT64 prefix 64:ff9b::/96 (IPv6-only hosts reach every IPv4-only site through
  it). 6to4 2002::/16 is judged by its tunnel endpoint's IPv4 as well. An allowlisted IPv4
  network admits these three forms, as it admits the IPv4 itself (as it always has).
- Every other prefix that embeds IPv4 goes through a translator or relay we do not control,
  where any IPv4 (127.0.0.1, 169.254.169.254) may be reachable, and is refused whatever it
  embeds: local-use NAT64 64:ff9b:1::/48 (RFC 8215; its RFC 6052 layout depends on the
  operator's prefix length, so the IPv4 cannot even be read reliably), SIIT ::ffff:0:0:0/96,
  IPv4-compatible ::/96 and Teredo 2001::/32. Only an allowlisted IPv6 network admits them.

`VTW_ALLOWED_NETWORKS` (the `allowed` argument) admits the addresses it contains before any of
this (tests and the local dev mode allow loopback).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .upstream import DestinationRefused

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


class _Ranges:
    """CIDRs merged into sorted, disjoint integer ranges, built once; a lookup is a bisect."""

    def __init__(self, *cidrs: str) -> None:
        spans = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in map(ipaddress.ip_network, cidrs)
        )
        merged: list[list[int]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self.firsts = [first for first, _ in merged]
        self.lasts = [last for _, last in merged]

    def __contains__(self, address: int) -> bool:
        i = bisect_right(self.firsts, address) - 1
        return i >= 0 and address <= self.lasts[i]


# IANA IPv4 Special-Purpose Address Registry, plus multicast (IANA multicast registry). In
# both tables, "global" marks what the registry calls globally reachable: refused all the same.
IPV4_DENIED = _Ranges(
    "0.0.0.0/8",  # "This network"                         RFC 791, RFC 1122 §3.2.1.3
    "10.0.0.0/8",  # Private-Use                            RFC 1918
    "100.64.0.0/10",  # Shared Address Space (CGNAT)        RFC 6598
    "127.0.0.0/8",  # Loopback                              RFC 1122 §3.2.1.3
    "169.254.0.0/16",  # Link Local (cloud metadata)        RFC 3927
    "172.16.0.0/12",  # Private-Use                         RFC 1918
    # IETF Protocol Assignments, all of it (RFC 6890 §2.1): Service Continuity 192.0.0.0/29
    # (RFC 7335), dummy 192.0.0.8 (RFC 7600), PCP anycast 192.0.0.9 (RFC 7723, global), TURN
    # anycast 192.0.0.10 (RFC 8155, global), NAT64/DNS64 discovery 192.0.0.170-171 (RFC 8880).
    "192.0.0.0/24",
    "192.0.2.0/24",  # Documentation (TEST-NET-1)           RFC 5737
    "192.31.196.0/24",  # AS112-v4 (global)                 RFC 7535
    "192.52.193.0/24",  # AMT (global)                      RFC 7450
    "192.88.99.0/24",  # Deprecated 6to4 Relay Anycast      RFC 7526
    "192.168.0.0/16",  # Private-Use                        RFC 1918
    "192.175.48.0/24",  # Direct Delegation AS112 (global)  RFC 7534
    "198.18.0.0/15",  # Benchmarking                        RFC 2544
    "198.51.100.0/24",  # Documentation (TEST-NET-2)        RFC 5737
    "203.0.113.0/24",  # Documentation (TEST-NET-3)         RFC 5737
    "224.0.0.0/4",  # Multicast                             RFC 5771
    "240.0.0.0/4",  # Reserved                              RFC 1112 §4
    "255.255.255.255/32",  # Limited Broadcast              RFC 8190, RFC 919 §7
)

# IANA IPv6 Special-Purpose Address Registry, plus what lies outside 2000::/3 (IANA IPv6
# Address Space registry). The prefixes judged by their IPv4 (`EMBEDDED_IPV4` below) are
# looked at before this table.
IPV6_DENIED = _Ranges(
    "::/128",  # Unspecified                                RFC 4291
    "::1/128",  # Loopback                                  RFC 4291
    "::/96",  # IPv4-compatible (deprecated)                RFC 4291 §2.5.5.1
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)            RFC 2765 §2.1 (obsolete)
    "64:ff9b:1::/48",  # Local-use IPv4/IPv6 translation    RFC 8215
    "100::/64",  # Discard-Only                             RFC 6666
    "100:0:0:1::/64",  # Dummy IPv6 Prefix                  RFC 9780
    # IETF Protocol Assignments, all of it (RFC 2928): Teredo 2001::/32 (RFC 4380), PCP, TURN
    # and DNS-SD SRP anycast 2001:1::1-3 (RFC 7723, 8155, 9665; global), Benchmarking
    # 2001:2::/48 (RFC 5180), AMT 2001:3::/32 (RFC 7450; global), AS112-v6 2001:4:112::/48
    # (RFC 7535; global), ORCHID 2001:10::/28 (deprecated, RFC 4843), ORCHIDv2 2001:20::/28
    # (RFC 7343; global), Drone Remote ID DETs 2001:30::/28 (RFC 9374; global).
    "2001::/23",
    "2001:db8::/32",  # Documentation                       RFC 3849
    "2620:4f:8000::/48",  # Direct Delegation AS112 (global) RFC 7534
    "3fff::/20",  # Documentation                           RFC 9637
    "5f00::/16",  # Segment Routing (SRv6) SIDs             RFC 9602
    "fc00::/7",  # Unique-Local                             RFC 4193
    "fe80::/10",  # Link-Local Unicast                      RFC 4291
    "fec0::/10",  # Site-local (deprecated)                 RFC 3879
    "ff00::/8",  # Multicast                                RFC 4291
    # Not global unicast (RFC 4291 §2.4): all but 2000::/3, which covers most entries above
    # and whatever the IETF assigns there next.
    "::/3",
    "4000::/2",
    "8000::/1",
)

# IPv6 prefixes judged by the IPv4 they carry, as (prefix, shift of the IPv4's 32 bits).
EMBEDDED_IPV4 = tuple(
    (int(network.network_address), int(network.broadcast_address), shift)
    for network, shift in (
        (ipaddress.IPv6Network("::ffff:0:0/96"), 0),  # IPv4-mapped       RFC 4291 §2.5.5.2
        (ipaddress.IPv6Network("64:ff9b::/96"), 0),  # NAT64 (global)     RFC 6052 §2.1, §2.2
        (ipaddress.IPv6Network("2002::/16"), 80),  # 6to4, bits 16-47     RFC 3056 §2
    )
)


def _embedded_ipv4(address: int) -> ipaddress.IPv4Address | None:
    for first, last, shift in EMBEDDED_IPV4:
        if first <= address <= last:
            return ipaddress.IPv4Address((address >> shift) & 0xFFFFFFFF)
    return None


SIIT_PREFIX = int(ipaddress.IPv6Address("::ffff:0:0:0")) >> 32  # IPv4-translated ::ffff:0:0:0/96


def carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address reaches (IPv4-mapped or -translated, NAT64, 6to4), if
    any: one host however it is spelt, for what counts per host (budgets, limits)."""
    address = int(ip)
    if address >> 32 == SIIT_PREFIX:
        return ipaddress.IPv4Address(address & 0xFFFFFFFF)
    return _embedded_ipv4(address)


def is_blocked(ip: IPAddress, allowed: Sequence[Network] = ()) -> bool:
    """Whether the guard refuses a connection to `ip` (see the module docstring)."""
    if any(ip in network for network in allowed if network.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return int(ip) in IPV4_DENIED
    embedded = _embedded_ipv4(int(ip))
    if embedded is not None:
        return is_blocked(embedded, allowed)
    return int(ip) in IPV6_DENIED


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


def guarded_session(allowed: Sequence[Network] = (), limit: int = 100) -> aiohttp.ClientSession:
    """The session for requests to caller-supplied URLs (the workers' polls and webhooks): the
    guard on every connection, at most `limit` of them, and no cookie jar (a cookie one
    tenant's upstream sets must not ride along another tenant's requests to that host; nor
    cost each request a jar lookup)."""
    connector = guarded_connector(allowed, limit=limit)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
