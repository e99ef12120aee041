"""The SSRF guard (DESIGN.md "URLs we fetch"): registration refuses literal blocked addresses,
and every connection, host names and redirect hops included, is checked after DNS resolution.

All traffic stays on loopback: "blocked" servers are real servers on 127.0.0.x that must never
see a request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import fakeredis
import httpx
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from client.ssrf import BlockedAddress, blocked_literal, guarded_connector, is_blocked
from client.upstream import fetch_status
from service.api.app import create_app
from service.settings import Settings

LOOPBACK_ALLOWED = "127.0.0.0/8,::1/128"
BLOCKED_URLS = [
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/status",
    "http://[::1]/status",
    "http://127.0.0.1:8080/status",
    "http://localhost:8080/status",
    "http://[::ffff:127.0.0.1]/status",
    "http://2130706433/status",  # 127.0.0.1 as one number; the URL parser normalizes it
    "http://100.64.0.1/status",
    # Issue 8, item 11: literals Python's is_global calls public.
    "http://[64:ff9b:1::7f00:1]/status",  # local-use NAT64 (RFC 8215) of 127.0.0.1
    "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data",  # ... of the metadata service
    "http://[::ffff:0:7f00:1]/status",  # SIIT IPv4-translated 127.0.0.1
    "http://192.0.0.8/status",  # IPv4 dummy address (RFC 7600)
]


def net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


# -- is_blocked ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.255.255.254",
        "::1",
        "10.0.0.1",  # private
        "172.16.0.1",
        "192.168.1.1",
        "fc00::1",  # unique local
        "169.254.169.254",  # link-local: cloud metadata
        "fe80::1",
        "100.64.0.1",  # CGNAT 100.64.0.0/10
        "100.127.255.254",
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "233.252.0.1",  # globally scoped multicast is still refused
        "ff0e::1",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "2001:db8::1",
        "0.0.0.0",  # unspecified
        "::",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # deprecated IPv4-compatible
        "fec0::1",  # deprecated site-local
    ],
)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1", "2001:4860:4860::8888",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


def test_an_allowlisted_cidr_admits_exactly_its_addresses() -> None:
    allowed = [net("10.1.0.0/16"), net("127.0.0.1/32"), net("::1/128")]

    assert not is_blocked(ipaddress.ip_address("10.1.2.3"), allowed)
    assert not is_blocked(ipaddress.ip_address("127.0.0.1"), allowed)
    assert not is_blocked(ipaddress.ip_address("::1"), allowed)
    assert not is_blocked(ipaddress.ip_address("::ffff:127.0.0.1"), allowed)  # mapped form too
    assert is_blocked(ipaddress.ip_address("10.2.0.1"), allowed)
    assert is_blocked(ipaddress.ip_address("127.0.0.2"), allowed)
    assert is_blocked(ipaddress.ip_address("169.254.169.254"), allowed)
    # An IPv4 allowlist says nothing about IPv6 loopback, and the other way round.
    assert is_blocked(ipaddress.ip_address("::1"), [net("127.0.0.0/8")])
    assert is_blocked(ipaddress.ip_address("127.0.0.1"), [net("::1/128")])


def test_blocked_literal_names_the_host_and_ignores_host_names() -> None:
    why = blocked_literal("http://169.254.169.254/latest/meta-data")
    assert why is not None and "169.254.169.254" in why and "VTW_ALLOWED_NETWORKS" in why
    assert blocked_literal("http://localhost:5000/status") is not None
    assert blocked_literal("http://api.localhost/status") is not None
    assert blocked_literal("http://[::1]:5000/status") is not None
    assert blocked_literal("https://8.8.8.8/hooks") is None
    # A host name is judged when it is resolved, at connect time.
    assert blocked_literal("http://translate-1:5000/status") is None
    assert blocked_literal("http://127.0.0.1:5000/status", [net("127.0.0.0/8")]) is None


# -- registration ----------------------------------------------------------------------------


@pytest.fixture
def no_vtw_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VTW_"):
            monkeypatch.delenv(name)


ApiFactory = Callable[[Settings], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_api(no_vtw_env: None) -> AsyncIterator[ApiFactory]:
    async with AsyncExitStack() as stack:

        async def start(settings: Settings) -> httpx.AsyncClient:
            redis = fakeredis.FakeAsyncRedis(decode_responses=True)
            stack.push_async_callback(redis.aclose)
            app = create_app(settings, redis=redis)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            )

        yield start


@pytest.mark.parametrize("url", BLOCKED_URLS)
@pytest.mark.parametrize("field", ["status_url", "webhook_url"])
async def test_registration_refuses_a_blocked_literal_address_naming_the_field(
    make_api: ApiFactory, field: str, url: str
) -> None:
    api = await make_api(Settings())
    body = {"status_url": "http://translate-1:5000/status", field: url}

    response = await api.post("/v1/watches", json=body)

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "not a public address" in error["msg"]
    listed = await api.get("/v1/watches")
    assert listed.json()["items"] == []  # nothing was stored


async def test_registration_names_both_fields_when_both_are_blocked(make_api: ApiFactory) -> None:
    api = await make_api(Settings())
    body = {"status_url": "http://10.0.0.1/status", "webhook_url": "http://[::1]/hooks"}

    response = await api.post("/v1/watches", json=body)

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [
        ["body", "status_url"],
        ["body", "webhook_url"],
    ]


async def test_registration_accepts_allowlisted_loopback_but_not_other_private_networks(
    make_api: ApiFactory,
) -> None:
    api = await make_api(Settings(allowed_networks=LOOPBACK_ALLOWED))  # type: ignore[arg-type]

    ok = await api.post(
        "/v1/watches",
        json={
            "status_url": "http://127.0.0.1:5000/status",
            "webhook_url": "http://[::1]:8080/hooks",
        },
    )
    refused = await api.post(
        "/v1/watches",
        json={"status_url": "http://127.0.0.1:5000/status", "webhook_url": "http://10.0.0.1/"},
    )

    assert ok.status_code == 201, ok.text
    assert ok.json()["status_url"] == "http://127.0.0.1:5000/status"
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "webhook_url"]


# -- connect time: host names and redirects ---------------------------------------------------


class StaticResolver(AbstractResolver):
    """Resolves the names it was given to fixed addresses; anything else does not exist."""

    def __init__(self, names: dict[str, str | list[str]]) -> None:
        self.names = names

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(socket.EAI_NONAME, f"unknown host {host}")
        addresses = self.names[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in ([addresses] if isinstance(addresses, str) else addresses)
        ]

    async def close(self) -> None:
        pass


class Server:
    """A loopback HTTP server that counts the requests it gets."""

    def __init__(self, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.requests: list[str] = []
        self.answer = answer
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        return await self.answer(request)

    async def start(self, host: str) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def completed(request: web.Request) -> web.Response:
    return web.json_response({"result": "completed"})


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    started: list[Server] = []

    async def start(
        answer: Callable[[web.Request], Awaitable[web.StreamResponse]] = completed,
        host: str = "127.0.0.1",
    ) -> Server:
        server = await Server(answer).start(host)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def guard_error(exc: BaseException) -> BlockedAddress | None:
    """The BlockedAddress somewhere in the exception's chain, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedAddress):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return None


async def test_a_host_name_resolving_to_loopback_is_refused_at_connect_time(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    server = await servers()
    url = f"http://upstream.test:{server.port}/status"
    resolver = StaticResolver({"upstream.test": "127.0.0.1"})
    # Registration cannot know where a name points: it lets the URL through.
    assert blocked_literal(url) is None

    async with aiohttp.ClientSession(connector=guarded_connector([], resolver=resolver)) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            async with s.get(url):
                pass
        seen = await fetch_status(s, url, timeout=5)

    blocked = guard_error(caught.value)
    assert blocked is not None, repr(caught.value)
    assert "127.0.0.1" in str(blocked)
    # A refused destination is final: the poll ends with "error", it is not retried.
    assert seen.status == "error" and seen.terminal and seen.http_status is None
    assert seen.error is not None and seen.error.startswith("blocked by the SSRF guard")
    assert server.requests == []


async def test_the_same_host_name_connects_when_its_network_is_allowlisted(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    """The control of the test above: the fake resolver and the server do work."""
    server = await servers()
    url = f"http://upstream.test:{server.port}/status"
    resolver = StaticResolver({"upstream.test": "127.0.0.1"})
    allowed = [net("127.0.0.0/8")]

    async with aiohttp.ClientSession(connector=guarded_connector(allowed, resolver=resolver)) as s:
        seen = await fetch_status(s, url, timeout=5)

    assert seen.status == "completed" and seen.error is None
    assert server.requests == ["/status"]


async def test_a_name_with_blocked_and_allowed_addresses_only_reaches_the_allowed_one(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    blocked = await servers(host="127.0.0.2")
    allowed_server = await servers(host="127.0.0.1")
    url = f"http://mixed.test:{allowed_server.port}/status"
    # The blocked address comes first: without the resolver's filter it would be tried first.
    resolver = StaticResolver({"mixed.test": ["127.0.0.2", "127.0.0.1"]})

    connector = guarded_connector([net("127.0.0.1/32")], resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as s:
        seen = await fetch_status(s, url, timeout=5)

    assert seen.status == "completed"
    assert allowed_server.requests == ["/status"] and blocked.requests == []


async def test_a_redirect_from_an_allowed_host_to_a_blocked_address_is_not_followed(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    target = await servers(host="127.0.0.2")
    target_url = f"http://127.0.0.2:{target.port}/latest/meta-data"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(target_url)

    origin = await servers(redirect, host="127.0.0.1")
    url = f"http://127.0.0.1:{origin.port}/status"
    allowed = [net("127.0.0.1/32")]  # exactly the first hop

    async with aiohttp.ClientSession(connector=guarded_connector(allowed)) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            async with s.get(url):
                pass
        seen = await fetch_status(s, url, timeout=5)

    blocked = guard_error(caught.value)
    assert blocked is not None, repr(caught.value)
    assert "127.0.0.2" in str(blocked)
    assert seen.terminal and seen.error is not None and "SSRF guard" in seen.error
    assert origin.requests == ["/status", "/status"]  # the first hop was made, twice
    assert target.requests == []  # the second never was

    # Control: the target is a working server that an unguarded session does reach.
    async with aiohttp.ClientSession() as plain, plain.get(target_url) as response:
        assert response.status == 200
    assert target.requests == ["/latest/meta-data"]


async def test_a_literal_blocked_address_is_refused_at_connect_time_too(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    """Registration refuses literals, but the connector does not rely on that."""
    server = await servers()
    url = f"http://127.0.0.1:{server.port}/status"

    async with aiohttp.ClientSession(connector=guarded_connector([])) as s:
        seen = await fetch_status(s, url, timeout=5)
        mapped = await fetch_status(s, f"http://[::ffff:127.0.0.1]:{server.port}/status", timeout=5)

    assert seen.error is not None and "SSRF guard" in seen.error
    assert mapped.error is not None and "SSRF guard" in mapped.error
    assert server.requests == []


@pytest.mark.parametrize("via", ["literal", "host name"])
@pytest.mark.parametrize(
    "address", ["64:ff9b:1::7f00:1", "64:ff9b:1::a9fe:a9fe", "::ffff:0:7f00:1", "192.0.0.8"]
)
async def test_translated_and_reserved_addresses_are_refused_at_connect_time(
    address: str, via: str
) -> None:
    """Issue 8, item 11: these were connected to (through a local NAT64 or SIIT translator,
    127.0.0.1 and the metadata service). The guard's own error names the address: no socket
    was opened, so the outcome does not depend on this machine's routes."""
    literal = f"[{address}]" if ":" in address else address
    host = literal if via == "literal" else "translated.test"
    url = f"http://{host}:8080/latest/meta-data"
    resolver = StaticResolver({"translated.test": address})
    timeout = aiohttp.ClientTimeout(total=5)  # the unguarded connect must not hang the test

    async with aiohttp.ClientSession(
        connector=guarded_connector([], resolver=resolver), timeout=timeout
    ) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            async with s.get(url):
                pass
        seen = await fetch_status(s, url, timeout=5)

    blocked = guard_error(caught.value)
    assert blocked is not None, repr(caught.value)
    assert address in str(blocked)
    assert seen.status == "error" and seen.terminal and seen.http_status is None
    assert seen.error is not None and seen.error.startswith("blocked by the SSRF guard")
