"""Tenants on shared hosts (issue 17): a host's budget shared max-min fairly between tenants,
breakers that do not cross tenants, a fleet breaker for real outages whose probe one tenant
cannot keep, and the budget of webhook receivers' hosts.

The Lua side through `service.store.hosts.HostBook`, against fakeredis, a real Redis and a cluster
(the `store` fixture), in real time (Redis `TIME` decides): rates are kept small so that a
second or two shows the shares.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from client.upstream import Status, fetch_status
from service.store.hosts import HostBook, HostPolicy, Report
from service.store.watches import Store
from tests.fakes import served
from worker.spec import endpoint

PORT = 443
# Tests that take seconds of real time run on the real Redis only: the scripts are the same on
# fakeredis and a cluster, where the quick tests below run too.
REAL_TIME = pytest.mark.parametrize("redis_client", ["redis"], indirect=True)
TIGHT = HostPolicy(20.0, 1.0, 0.5, 0.5)  # a bucket one request deep: shares show at once
A, B, C = "tenant-a", "tenant-b", "tenant-c"


def policy(rate: float = 20.0, burst: float = 5.0, cooldown: float = 0.5) -> HostPolicy:
    return HostPolicy(rate, burst, cooldown, probe_lease_seconds=0.5)


@pytest.fixture
def book(store: Store) -> HostBook:
    return store.hosts


def new_host() -> str:
    return f"up-{secrets.token_hex(4)}.example"


async def take(
    book: HostBook, host: str, tenant: str, n: int, pol: HostPolicy | None = None
) -> object:
    entry = (PORT, tenant)
    grants = await book.take({host: {entry: n}}, pol or policy(), secrets.token_hex(4))
    return grants[host][entry]


async def report(book: HostBook, host: str, tenant: str, **counts: object) -> tuple[int, bool]:
    script, keys, args = book.report_call(host, {(PORT, tenant): Report(**counts)}, policy())  # type: ignore[arg-type]
    return HostBook.reported(await script(keys=keys, args=args))


async def breaker(book: HostBook, host: str, tenant: str | None = None) -> str:
    state = await book.read(host, PORT, tenant)
    return "closed" if state is None else state.breaker


# -- fair shares of a host's budget ------------------------------------------------------------


@REAL_TIME
async def test_a_tenant_alone_may_take_the_whole_budget(book: HostBook) -> None:
    host = new_host()
    pol = policy(rate=100.0, burst=10.0)
    first = await take(book, host, A, 50, pol)
    assert first.granted == 10  # type: ignore[attr-defined]
    granted, deadline = 10, time.monotonic() + 0.5
    while time.monotonic() < deadline:
        granted += (await take(book, host, A, 50, pol)).granted  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)
    assert 50 <= granted <= 10 + 100 * 0.6  # about the budget: nobody else wants it


@REAL_TIME
async def test_two_tenants_that_both_want_more_get_half_each(book: HostBook) -> None:
    """Both ask far more than the budget, A first and more often: each gets about half."""
    host = new_host()
    got: Counter[str] = Counter()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for tenant in (A, A, A, B):  # A asks three times as often as B
            got[tenant] += (await take(book, host, tenant, 20, TIGHT)).granted  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    total = got[A] + got[B]
    print(f"shares at 20/s over 2 s: {dict(got)}")
    assert total <= 20 * 2.2 + 2  # the budget holds, whoever asks
    assert got[B] >= 0.4 * total and got[A] >= 0.4 * total


@REAL_TIME
async def test_what_a_light_tenant_leaves_goes_to_the_busy_one(book: HostBook) -> None:
    """Work-conserving: B wants 4/s of a 20/s budget and gets all of it, each request at once
    or at the one retry its refusal asks for (as a worker puts a refused poll off); A, which
    wants everything, gets the rest, not just half."""
    host = new_host()
    got: Counter[str] = Counter()
    asked_b, retry_at = 0, None
    start = time.monotonic()
    next_b = start
    while time.monotonic() < start + 2.0:
        got[A] += (await take(book, host, A, 20, TIGHT)).granted  # type: ignore[attr-defined]
        now = time.monotonic()
        if retry_at is not None and now >= retry_at:
            got[B] += (await take(book, host, B, 1, TIGHT)).granted  # type: ignore[attr-defined]
            retry_at = None
        elif retry_at is None and now >= next_b:
            asked_b += 1
            grant = await take(book, host, B, 1, TIGHT)
            got[B] += grant.granted  # type: ignore[attr-defined]
            if not grant.granted:  # type: ignore[attr-defined]
                retry_at = now + grant.wait_ms / 1000  # type: ignore[attr-defined]
            next_b += 0.25
        await asyncio.sleep(0.01)
    print(f"light B asked {asked_b}, shares: {dict(got)}")
    assert got[B] >= asked_b - 1  # B's requests go, at once or at their one retry
    assert got[A] >= 0.65 * (got[A] + got[B])  # far above half: B's unused share is A's


async def test_a_newcomer_behind_a_flood_waits_for_a_token_not_for_the_flood(
    book: HostBook,
) -> None:
    """A's 400 polls are refused and put in line; B's first ask is told to come back within
    a token or two of B's share, not behind A's queue."""
    host = new_host()
    pol = policy(rate=10.0, burst=1.0)
    flood = await take(book, host, A, 400, pol)
    assert flood.granted == 1  # type: ignore[attr-defined]
    newcomer = await take(book, host, B, 1, pol)
    assert newcomer.granted == 0  # type: ignore[attr-defined]
    assert newcomer.wait_ms <= 2 * 1000 / 10 * 2  # type: ignore[attr-defined]
    assert newcomer.share == pytest.approx(5.0)  # type: ignore[attr-defined]
    # A asks again at once, as a flood does: it has had its share, B's next token is B's.
    await asyncio.sleep(newcomer.wait_ms / 1000)  # type: ignore[attr-defined]
    assert (await take(book, host, A, 400, pol)).granted == 0  # type: ignore[attr-defined]
    assert (await take(book, host, B, 1, pol)).granted == 1  # type: ignore[attr-defined]


# -- breakers that do not cross tenants --------------------------------------------------------


async def trip(book: HostBook, host: str, tenant: str) -> int:
    """A tenant's polls of the port all fail: its breaker opens. Returns the breakers that
    opened (2 when the fleet's opened too)."""
    await take(book, host, tenant, 1)
    opened, _ = await report(book, host, tenant, failed=10)
    return opened


async def test_one_tenants_failing_path_opens_its_breaker_only(book: HostBook) -> None:
    host = new_host()
    assert await trip(book, host, A) == 1
    assert await breaker(book, host, A) == "open"
    assert await breaker(book, host, B) == "closed"
    assert await breaker(book, host) == "closed"  # the fleet's
    assert (await take(book, host, A, 1)).breaker == "open"  # type: ignore[attr-defined]
    healthy = await take(book, host, B, 1)
    assert healthy.granted == 1 and healthy.breaker == "closed"  # type: ignore[attr-defined]


async def test_a_second_tenant_tripping_with_nobody_healthy_opens_the_fleet_breaker(
    book: HostBook,
) -> None:
    """A real outage: two tenants' breakers open within a cool-down, no tenant's polls were
    answered: everyone stops at once, a third tenant included (no requests of its own)."""
    host = new_host()
    assert await trip(book, host, A) == 1
    assert await trip(book, host, B) == 2
    assert await breaker(book, host) == "open"
    refused = await take(book, host, C, 1)
    assert refused.granted == 0 and refused.breaker == "open"  # type: ignore[attr-defined]


async def test_another_tenants_healthy_answers_keep_the_fleet_breaker_closed(
    book: HostBook,
) -> None:
    """Two hostile tenants fail on purpose; the host answers the victim well: only the
    hostile tenants' own breakers open."""
    host = new_host()
    await take(book, host, C, 1)
    await report(book, host, C, ok=3)
    assert await trip(book, host, A) == 1
    assert await trip(book, host, B) == 1
    assert await breaker(book, host) == "closed"
    assert (await take(book, host, C, 1)).granted == 1  # type: ignore[attr-defined]


@REAL_TIME
async def test_the_fleet_probe_does_not_go_twice_in_a_row_to_one_tenant(book: HostBook) -> None:
    host = new_host()
    await trip(book, host, A)
    await trip(book, host, B)
    await asyncio.sleep(0.55)  # the cool-down
    first = await take(book, host, A, 1)
    assert first.granted == 1 and first.probe  # type: ignore[attr-defined]
    await report(book, host, A, failed=1, probe=first.probe)  # type: ignore[attr-defined]
    assert await breaker(book, host) == "open"
    assert (await take(book, host, B, 1)).granted == 0  # B waits, and is noted as waiting
    await asyncio.sleep(0.55)
    barred = await take(book, host, A, 1)  # A's probe failed last: B's turn
    assert barred.granted == 0 and not barred.probe  # type: ignore[attr-defined]
    second = await take(book, host, B, 1)
    assert second.granted == 1 and second.probe  # type: ignore[attr-defined]
    await report(book, host, B, ok=1, probe=second.probe, probe_ok=True)  # type: ignore[attr-defined]
    assert await breaker(book, host) == "closed"


@REAL_TIME
async def test_a_lone_tenant_probes_every_cool_down(book: HostBook) -> None:
    """Nobody else waits: the tenant whose probe failed probes again after the cool-down."""
    host = new_host()
    await trip(book, host, A)
    for _ in range(2):
        await asyncio.sleep(0.55)
        probe = await take(book, host, A, 1)
        assert probe.granted == 1 and probe.probe  # type: ignore[attr-defined]
        await report(book, host, A, failed=1, probe=probe.probe)  # type: ignore[attr-defined]


# -- one host, however it is spelt -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000/s",
        "http://[::ffff:127.0.0.1]:5000/s",
        "http://[::ffff:7f00:1]:5000/s",
        "http://[::ffff:0:127.0.0.1]:5000/s",
        "http://[64:ff9b::127.0.0.1]:5000/s",
        "http://[2002:7f00:1::]:5000/s",
    ],
)
def test_ipv6_spellings_of_an_ipv4_host_are_that_host(url: str) -> None:
    assert endpoint(url) == ("127.0.0.1", 5000)


def test_a_real_ipv6_host_stays_itself() -> None:
    assert endpoint("http://[2001:4860::8888]/s") == ("2001:4860::8888", 80)


# -- every request a host sees is admitted: the workers follow no redirect ---------------------


async def test_the_workers_fetch_follows_no_redirect_and_says_where_it_led() -> None:
    hops: list[str] = []

    async def hop(request: web.Request) -> web.Response:
        hops.append(request.path)
        left = int(request.match_info["left"])
        if left == 0:
            return web.json_response({"result": "completed"})
        raise web.HTTPFound(f"/r/{left - 1}")

    app = web.Application()
    app.router.add_get("/r/{left}", hop)
    async with served(app) as base, aiohttp.ClientSession() as session:
        seen = await fetch_status(session, f"{base}/r/8", 5, follow_redirects=False)
        assert hops == ["/r/8"]  # one request: the one the budget admitted
        assert seen.status is Status.ERROR and seen.http_status == 302
        assert seen.error == "HTTP 302: redirect to '/r/7' not followed; watch the final URL"
        followed = await fetch_status(session, f"{base}/r/8", 5)  # the client library's way
    assert followed.status is Status.COMPLETED and len(hops) == 1 + 9


async def test_a_receivers_budget_follows_its_limit_when_it_is_raised(book: HostBook) -> None:
    """No report ever moves a webhook receiver's budget (no AIMD there): a limit raised in the
    settings applies at once, not after the host's state expires."""
    host, entry = new_host(), (0, A)
    low = await book.take({host: {entry: 1}}, policy(rate=10.0), "p", kind="r")
    assert low[host][entry].budget == 10.0  # type: ignore[union-attr]
    high = await book.take({host: {entry: 1}}, policy(rate=100.0), "p", kind="r")
    assert high[host][entry].budget == 100.0  # type: ignore[union-attr]
