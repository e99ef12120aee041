"""The host-budget metrics move (issue 11): polls put off for the budget or an open breaker,
budget cuts after a 429 or 503, breaker trips; and a cut budget shows in `GET /v1/status`.

The real `Poller` polls a small aiohttp upstream on loopback that answers 200, 429 or 503; the
counters are read from the registry's exposition text (what `GET /metrics` serves), before and
after, as tests/test_metrics.py reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest

from service.api.auth import OPEN_TENANT
from service.settings import Settings
from service.store.watches import Store
from tests.fakes import served
from tests.service_fixtures import ApiFactory, fake_redis, real_redis_or_skip
from tests.test_host_budget import poller_settings, port_of, spec_of
from tests.test_metrics import samples
from worker.poller import Poller

from .test_store import TENANT, claim

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DEFERRED = "vtwatch_polls_deferred_total"
TRIPS = "vtwatch_breaker_trips_total"
CUTS = "vtwatch_host_budget_cuts_total"
REASONS = ("budget", "budget_unavailable", "breaker", "host_share")


@pytest.fixture(params=["fakeredis", "redis"])
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """The store fixture's client: fakeredis and the real Redis (not the cluster: these
    tests are about the poller's counters, the scripts' contract is test_host_budget.py's)."""
    client = (
        fake_redis()
        if request.param == "fakeredis"
        else await real_redis_or_skip(decode_responses=True)
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[int]]]:
    """The base URL of an upstream whose `/status/{code}` answers that status (200: pending;
    429 and 503 with `Retry-After: 1`); the statuses it answered."""
    answered: list[int] = []

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        answered.append(code)
        if code == 200:
            return web.json_response({"result": "pending"})
        return web.json_response({"error": "busy"}, status=code, headers={"Retry-After": "1"})

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    async with served(app) as base:
        yield f"{base}", answered


def scrape() -> Scrape:
    """Every sample of the default registry, as `GET /metrics` exposes it."""
    return samples(generate_latest(REGISTRY).decode())


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def assert_no_host_labels(after: Scrape) -> None:
    """The host metrics carry no host, port or URL: `reason` only, of its fixed values."""
    for name, labels in after:
        if name == DEFERRED:
            assert [key for key, _ in labels] == ["reason"] and labels[0][1] in REASONS
        elif name in (TRIPS, CUTS):
            assert labels == ()


async def poll_once(store: Store, poller: Poller, limit: int = 50) -> int:
    """Claim what is due and handle it all together (one batch, as the loop does); how many."""
    leased = await claim(store, limit)
    poller.sync_clock(leased.now_ms)
    for claimed in leased.watches:
        poller.keeper.hold(claimed)
    await asyncio.gather(*(poller._handle(c) for c in leased.watches))
    return len(leased.watches)


async def test_polls_over_budget_move_the_deferred_counter_by_reason_budget(
    store: Store, upstream: tuple[str, list[int]]
) -> None:
    base, answered = upstream
    for _ in range(3):
        await store.register(TENANT, spec_of(f"{base}/status/200"), 60)
    before = scrape()
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings(host_rate_limit=2, host_burst=1))
        assert await poll_once(store, poller) == 3
    after = scrape()

    assert answered == [200]  # the burst: one; the other two put off without a request
    assert moved(before, after, DEFERRED, reason="budget") == 2
    for reason in ("budget_unavailable", "breaker", "host_share"):
        assert moved(before, after, DEFERRED, reason=reason) == 0, reason
    assert moved(before, after, CUTS) == 0 and moved(before, after, TRIPS) == 0
    assert_no_host_labels(after)


@pytest.mark.parametrize("code", [429, 503])
async def test_a_throttling_answer_cuts_the_budget_once_and_the_cuts_counter_moves_once(
    store: Store, upstream: tuple[str, list[int]], make_api: ApiFactory, code: int
) -> None:
    """Two polls answered 429 (or 503) at once are one congestion: one cut (the script's
    once-per-second rule), counted once; the host's budget now shows in `GET /v1/status`."""
    base, answered = upstream
    url = f"{base}/status/{code}"
    for _ in range(2):
        await store.register(OPEN_TENANT, spec_of(url), 60)
    before = scrape()
    async with aiohttp.ClientSession() as session:
        settings = poller_settings(host_rate_limit=20, host_burst=4)
        poller = Poller(store, session, settings)
        assert await poll_once(store, poller) == 2
    after = scrape()

    assert answered == [code, code]
    assert moved(before, after, CUTS) == 1
    assert moved(before, after, TRIPS) == 0  # two failures are no breaker's business yet
    assert sum(moved(before, after, DEFERRED, reason=r) for r in REASONS) == 0
    assert_no_host_labels(after)

    api_settings = Settings.model_validate({"namespace": store.keys.namespace})
    api = await make_api(api_settings, redis=store.redis)
    (shown,) = (await api.get("/v1/status")).json()["hosts"]
    assert (shown["host"], shown["port"]) == ("127.0.0.1", port_of(url))
    assert shown["rate_limit"] == 20 and shown["budget"] == 10  # halved, once
    assert shown["breaker"] == "closed"


async def test_a_breaker_trip_moves_the_trips_counter_once_then_polls_are_put_off_by_it(
    store: Store, upstream: tuple[str, list[int]]
) -> None:
    """Five polls answered 503 (failures in a row) open the port's breaker: one trip, counted
    once however the reports were batched; the next polls of that port go without a request,
    counted under `breaker`."""
    base, answered = upstream
    url = f"{base}/status/503"
    for _ in range(5):
        await store.register(TENANT, spec_of(url), 60)
    settings = poller_settings(host_rate_limit=100, host_burst=10, host_breaker_cooldown=30)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, settings)
        before = scrape()
        assert await poll_once(store, poller) == 5
        tripped = scrape()
        assert answered == [503] * 5
        assert moved(before, tripped, TRIPS) == 1
        assert moved(before, tripped, CUTS) == 1  # a 503 is throttling too
        state = await store.hosts.read("127.0.0.1", port_of(url), TENANT)
        assert state is not None and state.breaker == "open" and state.trips == 1

        await store.register(TENANT, spec_of(url), 60)
        polled = await poll_once(store, poller)
        after = scrape()

    assert polled >= 1 and len(answered) == 5  # no request to the open port
    assert moved(tripped, after, DEFERRED, reason="breaker") == polled
    assert moved(tripped, after, DEFERRED, reason="budget") == 0
    assert moved(tripped, after, TRIPS) == 0 and moved(tripped, after, CUTS) == 0
    assert_no_host_labels(after)
