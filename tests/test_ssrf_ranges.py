"""The SSRF guard's deny list (client/ssrf.py): every special-purpose block of the IANA IPv4 and
IPv6 registries, and every prefix that embeds an IPv4 address, checked address by address
through `is_blocked` and through `blocked_literal` (a URL with the literal host).

The blocks are written out again here, from the registries, rather than read from the module,
so a block dropped from the module's tables fails a test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from client.ssrf import blocked_literal, is_blocked

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry, multicast and limited broadcast: refused whole.
IPV4_BLOCKS = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
]  # fmt: skip

# IPv6 blocks refused whole, whatever IPv4 they may embed.
IPV6_BLOCKS = [
    "::/128", "::1/128", "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64",
    "100:0:0:1::/64", "2001::/23", "2001::/32", "2001:db8::/32", "2620:4f:8000::/48",
    "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    # Outside 2000::/3, global unicast.
    "::/3", "4000::/2", "8000::/1",
]  # fmt: skip

# IPv6 prefixes judged by the IPv4 they embed; their first and last addresses embed 0.0.0.0
# and 255.255.255.255, both blocked.
IPV6_EMBEDDING = ["::ffff:0:0/96", "64:ff9b::/96", "2002::/16"]


def edges(cidr: str, middle: bool) -> Iterator[str]:
    network = ipaddress.ip_network(cidr)
    yield str(network.network_address)
    if middle:
        yield str(network.network_address + network.num_addresses // 2)
    yield str(network.broadcast_address)


def rfc6052(prefix: str, ipv4: str) -> IPv6:
    """RFC 6052 §2.2: the IPv4 bits follow the prefix, skipping bits 64-71 (the u octet)."""
    network = ipaddress.IPv6Network(prefix)
    value, position = int(network.network_address), network.prefixlen
    for i in range(32):
        if position == 64:
            position = 72
        value |= ((int(IPv4(ipv4)) >> (31 - i)) & 1) << (127 - position)
        position += 1
    return IPv6(value)


def teredo(server: str, client: str, port: int = 40000) -> IPv6:
    """RFC 4380 §4: 2001::/32, the server's IPv4, flags, then port and client IPv4 inverted."""
    value = (0x20010000 << 96) | (int(IPv4(server)) << 64) | (0x8000 << 48)
    return IPv6(value | ((port ^ 0xFFFF) << 32) | (int(IPv4(client)) ^ 0xFFFFFFFF))


# The issue's four literals (issue 8, item 11), accepted and connected to before.
ISSUE_LITERALS = ["64:ff9b:1::7f00:1", "64:ff9b:1::a9fe:a9fe", "::ffff:0:7f00:1", "192.0.0.8"]

NAMED_BLOCKED = {
    **{address: "the issue's literal" for address in ISSUE_LITERALS},
    # 192.0.0.0/24 all of it, its globally reachable anycast addresses too.
    "192.0.0.9": "PCP anycast, RFC 7723",
    "192.0.0.10": "TURN anycast, RFC 8155",
    "192.0.0.170": "NAT64 discovery, RFC 7050",
    "192.0.0.171": "NAT64 discovery, RFC 7050",
    "192.31.196.1": "AS112-v4",
    "192.52.193.1": "AMT",
    "192.175.48.1": "AS112 direct delegation",
    # IPv4 embedded where the socket, a translator or a relay reaches it.
    "::ffff:10.0.0.1": "IPv4-mapped private",
    "64:ff9b::7f00:1": "NAT64 of 127.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 of 169.254.169.254",
    "64:ff9b::c000:8": "NAT64 of 192.0.0.8",
    "2002:a9fe:a9fe::1": "6to4 of 169.254.169.254",
    "2002:c000:8::1": "6to4 of 192.0.0.8",
    # Refused whatever they embed, public IPv4 included.
    "64:ff9b:1::808:808": "local-use NAT64 of 8.8.8.8",
    str(rfc6052("64:ff9b:1::/48", "127.0.0.1")): "local-use NAT64 /48 of 127.0.0.1",
    str(rfc6052("64:ff9b:1::/48", "169.254.169.254")): "local-use NAT64 /48 of the metadata IP",
    str(rfc6052("64:ff9b:1:ff00::/56", "127.0.0.1")): "local-use NAT64 /56 of 127.0.0.1",
    str(rfc6052("64:ff9b:1:1::/64", "10.0.0.1")): "local-use NAT64 /64 of 10.0.0.1",
    # /48 layout of 127.0.0.1 whose last 32 bits read 8.8.8.8: naive extraction would admit it.
    "64:ff9b:1:7f00:0:100:808:808": "local-use NAT64 /48 of 127.0.0.1, bits after it 8.8.8.8",
    "::ffff:0:808:808": "SIIT of 8.8.8.8",
    "::ffff:0:a9fe:a9fe": "SIIT of 169.254.169.254",
    "::7f00:1": "IPv4-compatible 127.0.0.1",
    "::808:808": "IPv4-compatible 8.8.8.8",
    str(teredo("65.54.227.120", "127.0.0.1")): "Teredo, client 127.0.0.1",
    str(teredo("10.0.0.1", "8.8.8.8")): "Teredo, server 10.0.0.1",
    str(teredo("65.54.227.120", "8.8.8.8")): "Teredo, both public",
    # 2001::/23 all of it, its globally reachable entries too.
    "2001:1::1": "PCP anycast",
    "2001:1::2": "TURN anycast",
    "2001:1::3": "DNS-SD SRP anycast",
    "2001:2::1": "benchmarking",
    "2001:3::1": "AMT",
    "2001:4:112::1": "AS112-v6",
    "2001:10::1": "ORCHID",
    "2001:20::1": "ORCHIDv2",
    "2001:30::1": "DRIP DETs",
    "2620:4f:8000::1": "AS112 direct delegation",
    "3fff::1": "documentation, RFC 9637",
    "5f00::1": "SRv6 SIDs",
    "100:0:0:1::1": "dummy prefix, RFC 9780",
    "fe80::1%eth0": "link-local with a zone",
    "ff02::1": "multicast",
    "4000::1": "outside 2000::/3",
    "e000::1": "outside 2000::/3",
}

BLOCKED = sorted(
    (
        {a: cidr for cidr in IPV4_BLOCKS + IPV6_BLOCKS for a in edges(cidr, middle=True)}
        | {a: cidr for cidr in IPV6_EMBEDDING for a in edges(cidr, middle=False)}
        | NAMED_BLOCKED
    ).items()
)

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1",
    "64:ff9b::808:808", "64:ff9b::1.1.1.1",  # NAT64 of a public IPv4
    "::ffff:8.8.8.8", "2002:808:808::1",  # mapped and 6to4 forms of a public IPv4
    "192.0.1.1", "192.0.3.1", "100.128.0.1", "223.255.255.255", "2000::1", "3fff:1000::1",
]  # fmt: skip


def url_of(address: str) -> str:
    host = f"[{address.replace('%', '%25')}]" if ":" in address else address
    return f"http://{host}:8080/status"


@pytest.mark.parametrize(("address", "source"), BLOCKED)
def test_every_special_purpose_and_translated_address_is_blocked(address: str, source: str) -> None:
    assert is_blocked(ipaddress.ip_address(address)), source
    why = blocked_literal(url_of(address))
    assert why is not None and "not a public address" in why, source


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_and_their_public_translations_pass(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))
    assert blocked_literal(url_of(address)) is None


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("2001:db8::/32", "2001:db8:c000:221::"),
        ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
        ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
        ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
        ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100::"),
        ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
    ],
)
def test_the_rfc6052_helper_reproduces_the_rfc_examples(prefix: str, expected: str) -> None:
    """RFC 6052 §2.4's table for 192.0.2.33, so the local-use cases above are laid out right."""
    assert rfc6052(prefix, "192.0.2.33") == IPv6(expected)


def test_the_teredo_helper_agrees_with_the_standard_library() -> None:
    assert teredo("65.54.227.120", "192.0.2.45").teredo == (
        IPv4("65.54.227.120"),
        IPv4("192.0.2.45"),
    )


def test_an_allowed_ipv4_network_admits_the_forms_it_admitted_before_and_no_others() -> None:
    loopback = [ipaddress.ip_network("127.0.0.0/8")]

    for admitted in ["127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1"]:
        assert not is_blocked(ipaddress.ip_address(admitted), loopback), admitted
    for refused in ["64:ff9b:1::7f00:1", "::ffff:0:7f00:1", "::7f00:1", "::1"]:
        assert is_blocked(ipaddress.ip_address(refused), loopback), refused
    assert is_blocked(teredo("65.54.227.120", "127.0.0.1"), loopback)


def test_an_allowed_ipv6_network_admits_a_translation_prefix_explicitly() -> None:
    local_nat64 = [ipaddress.ip_network("64:ff9b:1::/48")]

    assert not is_blocked(IPv6("64:ff9b:1::7f00:1"), local_nat64)
    assert is_blocked(IPv6("64:ff9b:1::7f00:1"), [ipaddress.ip_network("64:ff9b::/96")])


def test_is_blocked_parses_no_network_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs for every connection: the tables are built once, at import."""

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network was parsed per call")

    monkeypatch.setattr(ipaddress, "ip_network", no_parsing)
    monkeypatch.setattr(ipaddress, "IPv4Network", no_parsing)
    monkeypatch.setattr(ipaddress, "IPv6Network", no_parsing)

    assert is_blocked(IPv6("64:ff9b:1::7f00:1"))
    assert not is_blocked(IPv6("64:ff9b::808:808"))
    assert not is_blocked(IPv4("8.8.8.8"))
