"""Fleet-wide host budgets and circuit breakers (issue 11, items 1 and 2).

The Lua side (`service/store/lua/host_*.lua` through `service.store.hosts.HostBook`) runs against
fakeredis and against a real Redis, like the store's contract suite; then the poller's side
(admission, deferral without an attempt, the deadline, reports, a failing store) and
`GET /v1/status`.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from client.upstream import Observation, Status
from service.api.auth import OPEN_TENANT
from service.api.schemas import WatchCreate
from service.metrics import POLLS_DEFERRED
from service.settings import Settings
from service.store.hosts import MAX_QUIET_MS, Grant, HostBook, HostPolicy, Report
from service.store.keys import Keys
from service.store.watches import Store
from tests.fakes import served
from tests.service_fixtures import ApiFactory, fake_redis
from worker.budget import HostBudget, failed
from worker.poller import Poller, unexpected

from .test_store import TENANT, claim

LIMIT = 10.0
PORT = 443


def policy(
    rate: float = LIMIT, burst: float = 2.0, cooldown: float = 0.4, probe_lease: float = 0.5
) -> HostPolicy:
    return HostPolicy(rate, burst, cooldown, probe_lease)


@pytest.fixture
def book(store: Store) -> HostBook:
    """The store's host scripts (the store fixture deletes the host keys too: `vtw:{ns/h/…`)."""
    return store.hosts


def new_host() -> str:
    return f"up-{secrets.token_hex(4)}.example"


async def take(
    book: HostBook,
    host: str,
    n: int,
    pol: HostPolicy | None = None,
    port: int = PORT,
    tenant: str = TENANT,
) -> Any:
    entry = (port, tenant)
    return (await book.take({host: {entry: n}}, pol or policy(), secrets.token_hex(4)))[host][entry]


async def report(
    book: HostBook,
    host: str,
    pol: HostPolicy | None = None,
    port: int = PORT,
    tenant: str = TENANT,
    **counts: Any,
) -> Any:
    call = book.report_call(host, {(port, tenant): Report(**counts)}, pol or policy())
    script, keys, args = call
    return HostBook.reported(await script(keys=keys, args=args))


async def state(book: HostBook, host: str, port: int = PORT, tenant: str = TENANT) -> Any:
    found = await book.read(host, port, tenant)
    assert found is not None
    return found


async def admit(budget: HostBudget, host: str, port: int = PORT, tenant: str = TENANT) -> Any:
    return budget.spend_credit(host, port, tenant) or await budget.ask(host, port, tenant)


# -- the token bucket ------------------------------------------------------------------------


async def test_a_fresh_host_grants_its_burst_then_makes_the_rest_wait_for_a_token(
    book: HostBook,
) -> None:
    host = new_host()
    grant = await take(book, host, 5)

    assert grant.granted == 2  # the burst
    assert grant.breaker == "closed" and grant.probe is None
    assert 50 <= grant.wait_ms <= 100  # one token at 10/s
    assert grant.budget == LIMIT


async def test_a_budget_holds_over_time_for_every_caller_together(book: HostBook) -> None:
    """Two "workers" asking as fast as they can for 1.2 s get at most burst + rate x time."""
    host = new_host()
    granted = 0
    began = time.monotonic()
    while time.monotonic() - began < 1.2:
        grants = await asyncio.gather(take(book, host, 3), take(book, host, 3))
        granted += sum(g.granted for g in grants)
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - began

    assert granted <= 2 + LIMIT * elapsed + 1
    assert granted >= LIMIT * 1.2 - 2


async def test_hosts_have_separate_buckets_and_keys_of_their_own_slot(
    book: HostBook, store: Store
) -> None:
    first, second = new_host(), new_host()
    assert (await take(book, first, 5)).granted == 2
    assert (await take(book, second, 5)).granted == 2

    keys = Keys(store.keys.namespace)
    assert keys.host(first) != keys.host(second)
    # Each host's key has a hash tag of its own (not the namespace's), so hosts spread over a
    # cluster's slots; every host script takes that one key.
    assert keys.host(first).count("{") == 1 and f"{{{keys.namespace}}}" not in keys.host(first)
    slots = {key_slot(keys.host(f"h{n}.example").encode()) for n in range(50)}
    assert len(slots) > 40
    # A host's breakers (one per port) share its budget's slot: a take touches one slot.
    breakers = {keys.breaker(first, port) for port in (9, 80, 443)}
    assert len(breakers) == 3 and keys.host(first) not in breakers
    assert {key_slot(k.encode()) for k in breakers} == {key_slot(keys.host(first).encode())}


# -- backpressure: the budget moves with the host's answers (AIMD) ------------------------------


@pytest.mark.parametrize("redis_client", ["redis"], indirect=True)  # real-time: one store
async def test_a_429_halves_the_budget_once_per_second_never_below_the_floor(
    book: HostBook,
) -> None:
    host = new_host()
    await take(book, host, 1)

    assert await report(book, host, ok=1, throttled=1) == (False, True)
    assert (await state(book, host)).budget == LIMIT / 2
    # Another worker's 429 within the second is the same congestion: no second cut.
    assert await report(book, host, ok=3, throttled=3) == (False, False)
    assert (await state(book, host)).budget == LIMIT / 2
    for _ in range(8):
        await asyncio.sleep(0.3)
        await report(book, host, pol=policy(), ok=1, throttled=1)
        await asyncio.sleep(0.75)
    assert (await state(book, host)).budget == pytest.approx(LIMIT / 64, abs=0.002)


async def test_good_answers_grow_the_budget_back_by_a_share_per_second_up_to_the_limit(
    book: HostBook,
) -> None:
    host = new_host()
    await report(book, host, ok=1, throttled=1)
    assert (await state(book, host)).budget == LIMIT / 2

    began = time.monotonic()
    while time.monotonic() - began < 1.0:
        await report(book, host, ok=2)
        await asyncio.sleep(0.05)
    grown = (await state(book, host)).budget
    assert LIMIT / 2 + 0.3 < grown <= LIMIT / 2 + 0.05 * LIMIT * 1.3  # ~5 % of 10/s per second

    # A bucket cut to half also holds half the burst, and refills at half the rate.
    grant = await take(book, host, 10)
    assert grant.granted <= 1
    assert grant.budget == pytest.approx(grown, abs=0.002)


async def test_the_budget_never_grows_above_the_configured_limit(book: HostBook) -> None:
    host = new_host()
    for _ in range(5):
        await report(book, host, ok=50)
        await asyncio.sleep(0.05)
    assert (await state(book, host)).budget == LIMIT
    # A smaller limit configured later bounds the stored budget at once.
    grant = await take(book, host, 1, policy(rate=4.0))
    assert grant.budget == 4.0


async def test_a_retry_after_holds_the_budget_down_until_it_has_passed(book: HostBook) -> None:
    host = new_host()
    await report(book, host, ok=1, throttled=1, quiet_ms=600)
    for _ in range(5):
        await asyncio.sleep(0.06)
        await report(book, host, ok=5)
    assert (await state(book, host)).budget == LIMIT / 2  # still quiet
    await asyncio.sleep(0.5)
    await report(book, host, ok=5)
    await asyncio.sleep(0.2)
    await report(book, host, ok=5)
    assert (await state(book, host)).budget > LIMIT / 2


async def test_a_tiny_budget_is_no_zero_and_puts_polls_off_without_dividing_by_it(
    book: HostBook,
) -> None:
    """A limit under a thousandth of a request per second (or a budget cut that low) is
    answered unrounded; polls over it are put off, in line, however long."""
    tiny = policy(rate=0.0009, burst=1.0)
    host = new_host()
    grant = await take(book, host, 2, tiny)
    assert grant.granted == 1 and grant.budget == pytest.approx(0.0009)

    budget = HostBudget(book, tiny, random.Random(1))
    first, second = await asyncio.gather(admit(budget, host), admit(budget, host))
    assert not first.go and not second.go
    assert first.reason == second.reason == "budget"
    assert 0 < first.wait_seconds < second.wait_seconds < math.inf


async def test_a_large_budget_is_taken_ahead_and_a_small_one_exactly(book: HostBook) -> None:
    takes = 0
    real_take = book.take

    async def counted(*args: Any) -> Any:
        nonlocal takes
        takes += 1
        return await real_take(*args)

    book.take = counted  # type: ignore[method-assign]
    big, small = new_host(), new_host()
    wide = HostBudget(book, policy(rate=2000.0, burst=2000.0), random.Random(1))
    assert (await admit(wide, big)).go  # learns the budget: 2000/s, 100 ahead next time
    assert (await admit(wide, big)).go
    before = takes
    spent = [await admit(wide, big) for _ in range(100)]
    assert all(a.go for a in spent) and takes == before  # the tokens taken ahead, no round trip
    await asyncio.sleep(0.15)  # unspent ones are dropped after CREDIT_SECONDS
    assert (await admit(wide, big)).go and takes == before + 1

    narrow = HostBudget(book, policy(rate=20.0, burst=3.0), random.Random(1))
    answers = [await admit(narrow, small) for _ in range(5)]
    assert [a.go for a in answers] == [True, True, True, False, False]  # the burst, no more


def test_garbage_retry_after_values_are_bounded_before_they_reach_redis() -> None:
    budget = HostBudget.__new__(HostBudget)
    budget._reports, budget._tenants, budget._noted = {}, {}, {}
    seen = [
        Observation(None, 429, "HTTP 429", retry_after=math.nan),
        Observation(None, 503, "HTTP 503", retry_after=-5.0),
        Observation(None, 429, "HTTP 429", retry_after=math.inf),
        Observation(None, 429, "HTTP 429", retry_after=1e300),
    ]
    for observation in seen:
        budget.observe(TENANT, "h.example", PORT, observation, None)
    gathered = budget._reports["h.example"][PORT, TENANT]
    assert gathered.throttled == 4 and gathered.failed == 1 and gathered.ok == 3
    assert gathered.quiet_ms == 86_400_000  # the huge one, clamped here...
    book = HostBook.__new__(HostBook)
    book._scripts = {"host_report": None}  # type: ignore[dict-item]
    book.keys = Keys()
    _, _, args = book.report_call("h.example", {(PORT, TENANT): gathered}, policy())
    assert args[4] == MAX_QUIET_MS  # ...and to a minute in the report


@pytest.mark.parametrize(
    ("observation", "is_failure"),
    [
        (Observation(None, None, "connection refused"), True),
        (Observation(None, None, "request timed out"), True),
        (Observation(None, 500, "HTTP 500"), True),
        (Observation(None, 503, "HTTP 503"), True),
        (Observation(None, 429, "HTTP 429"), False),
        (Observation(None, 200, "response body is not JSON"), False),
        (Observation(Status.ERROR, 404, "HTTP 404: job not found"), False),
        (Observation(Status.PENDING, 200), False),
        # An internal error of ours (a bug while polling) is no failure of the host.
        (Observation(None, None, "internal error while polling", internal=True), False),
        (Observation(None, None, "unexpected KeyError", internal=True), False),
    ],
)
def test_what_counts_as_a_failed_poll_for_the_breaker(
    observation: Observation, is_failure: bool
) -> None:
    assert failed(observation) is is_failure


# -- the circuit breaker -----------------------------------------------------------------------


async def trip(
    book: HostBook,
    host: str,
    pol: HostPolicy | None = None,
    port: int = PORT,
    tenant: str = TENANT,
    opened: int = 1,
) -> None:
    """Open the tenant's breaker of `port` of the host: 6 of 10 polls in the window failed
    (`opened`: the breakers that opens, 2 when it also opens the fleet's)."""
    await take(book, host, 1, pol, port, tenant)
    assert await report(book, host, pol, port, tenant, ok=4, failed=5) == (False, False)
    assert await report(book, host, pol, port, tenant, failed=1) == (opened, False)


async def test_mostly_failing_polls_open_the_breaker_and_one_probe_goes_after_the_cooldown(
    book: HostBook,
) -> None:
    host = new_host()
    await trip(book, host)
    shown = await state(book, host)
    assert shown.breaker == "open" and shown.trips == 1 and shown.open_until_ms is not None

    refused = await take(book, host, 5)
    assert refused.granted == 0 and refused.breaker == "open"
    assert 300 <= refused.wait_ms <= 400  # the cool-down

    await asyncio.sleep(refused.wait_ms / 1000 + 0.02)
    assert (await state(book, host)).breaker == "half_open"  # shown so before anyone asks
    probing = await asyncio.gather(*(take(book, host, 5) for _ in range(4)))
    assert sum(g.granted for g in probing) == 1, "one probe for the whole fleet"
    (probe,) = [g for g in probing if g.granted]
    assert probe.probe and probe.breaker == "half_open"
    assert all(g.wait_ms <= 1000 for g in probing)

    # The probe fails: open again for a cool-down; then another probe succeeds: closed.
    assert await report(book, host, failed=1, probe=probe.probe) == (False, False)
    assert (await state(book, host)).breaker == "open"
    assert (await take(book, host, 1)).granted == 0
    await asyncio.sleep(0.45)
    second = await take(book, host, 3)
    assert second.granted == 1 and second.probe and second.probe != probe.probe
    assert await report(book, host, ok=1, probe=second.probe, probe_ok=True) == (False, False)
    assert (await state(book, host)).breaker == "closed"
    assert (await take(book, host, 1)).granted == 1
    assert (await state(book, host)).trips == 1  # a failed probe reopens; it is no new trip


@pytest.mark.parametrize("redis_client", ["redis"], indirect=True)  # real-time: one store
async def test_while_a_probe_is_out_the_others_wait_for_its_lease_at_most_a_cooldown(
    book: HostBook,
) -> None:
    """No asking again every second while the probe is out (10 000 watches of a dead host
    would be 10 000 takes a second): the others wait out the probe's lease, at most a
    cool-down."""
    host = new_host()
    slow = policy(cooldown=1.2, probe_lease=2.0)
    await trip(book, host, slow)
    await asyncio.sleep(1.25)
    probing = await asyncio.gather(*(take(book, host, 3, slow) for _ in range(3)))
    assert sum(g.granted for g in probing) == 1
    assert all(1100 <= g.wait_ms <= 1200 for g in probing), probing  # the cool-down, not 1 s
    await asyncio.sleep(1.0)
    later = await take(book, host, 1, slow)
    assert later.granted == 0 and later.breaker == "half_open"
    assert 700 <= later.wait_ms <= 1000  # the rest of the probe's lease


def test_polls_refused_by_a_breaker_come_back_spread_over_a_fifth_of_their_wait() -> None:
    class Book:
        async def take(self, wants: Any, pol: HostPolicy, probe_id: str) -> Any:
            wait_ms = 10_000
            return {
                h: {e: Grant(0, wait_ms, LIMIT, "half_open", None, LIMIT) for e in entries}
                for h, entries in wants.items()
            }

    budget = HostBudget(Book(), policy(), random.Random(7))  # type: ignore[arg-type]

    async def ask_all() -> list[Any]:
        return await asyncio.gather(*(admit(budget, "h.example") for _ in range(500)))

    waits = [a.wait_seconds for a in asyncio.run(ask_all())]
    assert all(10.0 <= w <= 12.0 for w in waits)
    assert max(waits) - min(waits) > 1.8  # not all back at once


async def test_a_probe_reported_twice_counts_once(book: HostBook) -> None:
    host = new_host()
    await trip(book, host)
    await asyncio.sleep(0.45)
    probe = await take(book, host, 1)
    ok = {"ok": 1, "probe": probe.probe, "probe_ok": True}
    await report(book, host, **ok)
    await report(book, host, **ok)  # a repeated report finds no probe out
    assert (await state(book, host)).breaker == "closed"
    failed_late = {"failed": 1, "probe": probe.probe}
    await report(book, host, **failed_late)  # a stale probe id changes nothing
    assert (await state(book, host)).breaker == "closed"


async def test_a_probe_that_never_reports_frees_its_place_after_its_lease(
    book: HostBook,
) -> None:
    host = new_host()
    await trip(book, host)
    await asyncio.sleep(0.45)
    lost = await take(book, host, 1)
    assert lost.granted == 1
    assert (await take(book, host, 1)).granted == 0
    await asyncio.sleep(0.55)  # the probe lease
    again = await take(book, host, 1)
    assert again.granted == 1 and again.probe != lost.probe


async def test_a_breaker_is_per_port_while_the_budget_is_the_hosts(book: HostBook) -> None:
    """A closed port of a host (another tenant's, maybe) opens its own breaker only; the
    healthy port of the same host is still polled, from the one budget of the host."""
    host = new_host()
    await trip(book, host, port=9)
    assert (await state(book, host, port=9)).breaker == "open"
    assert (await state(book, host)).breaker == "closed"

    nine, port = (9, TENANT), (PORT, TENANT)
    grants = await book.take({host: {nine: 3, port: 3}}, policy(), secrets.token_hex(4))
    assert grants[host][nine].granted == 0 and grants[host][nine].breaker == "open"
    assert grants[host][port].granted >= 1 and grants[host][port].breaker == "closed"
    # Every port draws on the host's one bucket: the budget per machine is no port's.
    fresh, eighty = new_host(), (80, TENANT)
    grants = await book.take({fresh: {eighty: 3, port: 3}}, policy(burst=4.0), "p")
    assert (grants[fresh][eighty].granted, grants[fresh][port].granted) == (3, 1)

    # One report for both ports: each port's answers move its own breaker.
    script, keys, args = book.report_call(
        host, {nine: Report(failed=1), port: Report(ok=20)}, policy()
    )
    assert HostBook.reported(await script(keys=keys, args=args)) == (0, False)
    assert (await state(book, host)).breaker == "closed"
    assert (await state(book, host, port=9)).trips == 1


async def test_some_failures_do_not_trip_the_breaker(book: HostBook) -> None:
    host = new_host()
    for _ in range(5):
        assert await report(book, host, ok=6, failed=4) == (False, False)
    assert await report(book, host, failed=4) == (False, False)  # 24 of 54 in the window
    assert (await state(book, host)).breaker == "closed"
    assert (await take(book, host, 1)).granted == 1


async def test_failed_polls_in_a_row_open_the_breaker_however_slowly_they_come(
    book: HostBook,
) -> None:
    # A budget cut to its floor by 503s sends fewer than the window's 10 polls: a streak of 5
    # failures still opens the breaker; a good answer in between ends the streak.
    slow, mixed = new_host(), new_host()
    for _ in range(4):
        assert await report(book, slow, failed=1) == (False, False)
    assert (await state(book, slow)).breaker == "closed"
    assert await report(book, slow, failed=1) == (True, False)
    assert (await state(book, slow)).breaker == "open"

    for answered in ({"failed": 4}, {"ok": 1}, {"failed": 4}):
        assert await report(book, mixed, **answered) == (False, False)
    assert (await state(book, mixed)).breaker == "closed"


async def test_a_streak_of_failures_on_a_host_that_mostly_answers_well_is_chance(
    book: HostBook,
) -> None:
    # A busy host failing one poll in ten sees 5 failures in a row now and then: with most of
    # the window's polls answered well, that does not stop the whole fleet's polls of it.
    busy = new_host()
    assert await report(book, busy, ok=20) == (False, False)
    for _ in range(8):
        assert await report(book, busy, failed=1) == (False, False)
    assert (await state(book, busy)).breaker == "closed"
    assert (await take(book, busy, 1)).granted == 1
    # Ten in a row are no chance: a host that just died opens however good its window was.
    assert await report(book, busy, failed=1) == (False, False)
    assert await report(book, busy, failed=1) == (True, False)


# -- the tenant's view -------------------------------------------------------------------------


async def test_a_tenant_sees_only_the_hosts_its_own_watches_polled(book: HostBook) -> None:
    mine, theirs = new_host(), new_host()
    for host in (mine, theirs):
        await take(book, host, 1)
    for tenant, host in (("a", mine), ("b", theirs)):
        script, keys, args = book.tenant_hosts_call(tenant, [(host, PORT)])
        await script(keys=keys, args=args)

    assert [s.host for s in await book.of_tenant("a")] == [mine]
    assert [s.host for s in await book.of_tenant("b")] == [theirs]
    assert await book.of_tenant("c") == []


async def test_status_shows_the_tenants_hosts_with_budget_and_breaker(
    make_api: ApiFactory,
) -> None:
    redis = fake_redis()
    keyed = Settings.model_validate({"api_keys": "a:key-a-0123456789abcdef,b:key-b-0123456789"})
    api = await make_api(keyed, redis=redis)
    book = Store(redis).hosts
    host = "translate-1"
    await trip(book, host, tenant="a")
    script, keys, args = book.tenant_hosts_call("a", [(host, PORT)])
    await script(keys=keys, args=args)

    as_a = {"Authorization": "Bearer key-a-0123456789abcdef"}
    as_b = {"Authorization": "Bearer key-b-0123456789"}
    (shown,) = (await api.get("/v1/status", headers=as_a)).json()["hosts"]
    assert shown["host"] == host and shown["port"] == PORT and shown["breaker"] == "open"
    assert shown["budget"] == LIMIT and shown["rate_limit"] == LIMIT
    assert shown["breaker_trips"] == 1 and shown["open_until"] is not None
    assert "hosts" not in (await api.get("/v1/status", headers=as_b)).json()


async def test_a_host_whose_state_cannot_be_read_is_left_out_of_the_tenants_view(
    book: HostBook, store: Store
) -> None:
    good, unreadable, garbled = new_host(), new_host(), new_host()
    for host in (good, garbled):
        await take(book, host, 1)
    await store.redis.set(store.keys.host(unreadable), "corrupt")  # WRONGTYPE for its script
    await store.redis.hset(store.keys.breaker(garbled, PORT), "state", "exploded")
    script, keys, args = book.tenant_hosts_call("a", [(h, PORT) for h in (good, unreadable)])
    await script(keys=keys, args=args)
    script, keys, args = book.tenant_hosts_call("a", [(garbled, PORT)])
    await script(keys=keys, args=args)

    assert [s.host for s in await book.of_tenant("a")] == [good]


async def test_status_answers_without_the_hosts_it_cannot_read(make_api: ApiFactory) -> None:
    redis = fake_redis()
    api = await make_api(redis=redis)
    book = Store(redis).hosts
    await take(book, "good.example", 1)
    await redis.set(book.keys.host("bad.example"), "corrupt")
    script, keys, args = book.tenant_hosts_call(
        OPEN_TENANT, [("good.example", PORT), ("bad.example", PORT)]
    )
    await script(keys=keys, args=args)

    answer = await api.get("/v1/status")
    assert answer.status_code == 200, answer.text
    assert [h["host"] for h in answer.json()["hosts"]] == ["good.example"]

    await redis.delete(book.keys.tenant_hosts(OPEN_TENANT))
    await redis.set(book.keys.tenant_hosts(OPEN_TENANT), "corrupt")  # the list itself
    answer = await api.get("/v1/status")
    assert answer.status_code == 200, answer.text
    assert "hosts" not in answer.json() and answer.json()["total"] == 0


# -- the poller ------------------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[float]]]:
    """A pending job's status URL; the times it was requested."""
    hits: list[float] = []

    async def status(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.json_response({"result": "pending"})

    app = web.Application()
    app.router.add_get("/status", status)
    async with served(app) as base:
        yield f"{base}/status", hits


def spec_of(url: str) -> dict[str, Any]:
    return WatchCreate.model_validate({"status_url": url}).spec()


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def poller_settings(**values: Any) -> Settings:
    return Settings.model_validate(
        {"min_poll_interval": 0.05, "allowed_networks": "127.0.0.0/8", **values}
    )


async def poll_until_it_ends(store: Store, poller: Poller, doc: Any) -> Any:
    """Claim and handle the watch's polls until it ends (5 s at most); its last document."""
    ended = doc
    deadline = time.monotonic() + 5
    while ended["state"] == "pending" and time.monotonic() < deadline:
        leased = await claim(store)
        poller.sync_clock(leased.now_ms)
        for claimed in leased.watches:
            poller.keeper.hold(claimed)
            await poller._handle(claimed)
        ended = await store.get(TENANT, doc["id"])
        await asyncio.sleep(0.02)
    return ended


async def test_polls_over_budget_are_put_off_in_line_without_spending_an_attempt(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    url, hits = upstream
    for _ in range(4):
        await store.register(TENANT, spec_of(url), 60)
    deferred_before = POLLS_DEFERRED.labels("budget")._value.get()
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings(host_rate_limit=2, host_burst=1))
        leased = await claim(store)
        poller.sync_clock(leased.now_ms)
        for claimed in leased.watches:
            poller.keeper.hold(claimed)
        await asyncio.gather(*(poller._handle(c) for c in leased.watches))

    assert len(hits) == 1
    docs = [await store.get(TENANT, c.id) for c in leased.watches]
    assert sorted(d["attempts"] for d in docs) == [0, 0, 0, 1]
    assert POLLS_DEFERRED.labels("budget")._value.get() - deferred_before == 3
    put_off = [d["id"] for d in docs if d["attempts"] == 0]
    due = sorted(
        [await store.redis.zscore(store.keys.of(i).schedule, i) - leased.now_ms for i in put_off]
    )
    # In line at 2/s: about 0.5 s, 1 s and 1.5 s from now (+10 % spread).
    for place, wait_ms in enumerate(due):
        assert 400 + 500 * place <= wait_ms <= 650 + 600 * place, due


async def test_a_watch_refused_at_its_deadline_ends_as_timeout_without_a_request(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    url, hits = upstream
    await trip(book, "127.0.0.1", policy(cooldown=30), port_of(url))
    doc, _ = await store.register(TENANT, spec_of(url), 0.2)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings(host_breaker_cooldown=30))
        ended = await poll_until_it_ends(store, poller, doc)

    assert not hits
    assert ended["state"] == "timeout" and ended["reason"] == "deadline reached"
    assert ended["attempts"] == 0
    assert "circuit breaker" in ended["last_error"]
    assert ended["finished_at"] - ended["deadline"] < 1000


async def test_the_poller_reports_what_it_saw_with_its_next_save(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    url, _ = upstream
    doc, _ = await store.register(TENANT, spec_of(url), 60)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())
        leased = await claim(store)
        poller.sync_clock(leased.now_ms)
        (claimed,) = leased.watches
        poller.keeper.hold(claimed)
        await poller._handle(claimed)

    assert (await store.get(TENANT, doc["id"]))["attempts"] == 1
    (shown,) = await book.of_tenant(TENANT)
    assert shown.host == "127.0.0.1" and shown.port == port_of(url)
    assert shown.breaker == "closed"
    assert shown.rate_limit == 20.0


async def test_a_closed_port_of_one_tenant_does_not_stop_another_tenants_polls_of_the_host(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    """Mallory's watches poll a closed port of the host that serves the victim's jobs: that
    port's breaker opens; the victim's watch on the healthy port is still polled."""
    url, hits = upstream
    settings = poller_settings(host_rate_limit=1000, host_burst=100, host_breaker_cooldown=30)
    for _ in range(12):
        await store.register("mallory", spec_of("http://127.0.0.1:9/status"), 60)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, settings)
        leased = await claim(store, 50)
        poller.sync_clock(leased.now_ms)
        for claimed in leased.watches:
            poller.keeper.hold(claimed)
        await asyncio.gather(*(poller._handle(c) for c in leased.watches))
        assert (await state(book, "127.0.0.1", port=9, tenant="mallory")).breaker == "open"

        victim, _ = await store.register("victim", spec_of(url), 60)
        leased = await claim(store, 50)
        poller.sync_clock(leased.now_ms)
        (claimed,) = [c for c in leased.watches if c.doc["tenant"] == "victim"]
        poller.keeper.hold(claimed)
        await poller._handle(claimed)

    assert len(hits) == 1
    assert (await store.get("victim", victim["id"]))["attempts"] == 1
    (shown,) = await book.of_tenant("victim")
    assert (shown.port, shown.breaker) == (port_of(url), "closed")
    (theirs,) = await book.of_tenant("mallory")
    assert (theirs.port, theirs.breaker) == (9, "open")


def test_an_internal_error_while_polling_counts_neither_for_nor_against_the_host() -> None:
    budget = HostBudget.__new__(HostBudget)
    budget._reports, budget._tenants, budget._noted = {}, {}, {}
    for _ in range(20):
        budget.observe(TENANT, "h.example", PORT, unexpected("polling the upstream"), None)
    assert budget._reports == {}
    assert budget._tenants == {TENANT: {("h.example", PORT)}}


async def test_a_host_whose_state_cannot_be_read_puts_off_its_own_polls_only(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    """One host's script fails (its key is not a hash: as if its slot were down): its polls
    are put off, without an attempt; the other hosts' polls of the same batch go."""
    url, hits = upstream
    await store.redis.set(store.keys.host("127.0.0.2"), "corrupt")
    healthy, _ = await store.register(TENANT, spec_of(url), 60)
    broken, _ = await store.register(TENANT, spec_of("http://127.0.0.2:9/status"), 60)
    unavailable = POLLS_DEFERRED.labels("budget_unavailable")._value.get()
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())
        leased = await claim(store)
        poller.sync_clock(leased.now_ms)
        for claimed in leased.watches:
            poller.keeper.hold(claimed)
        await asyncio.gather(*(poller._handle(c) for c in leased.watches))

    assert len(hits) == 1
    assert (await store.get(TENANT, healthy["id"]))["attempts"] == 1
    assert (await store.get(TENANT, broken["id"]))["attempts"] == 0
    assert POLLS_DEFERRED.labels("budget_unavailable")._value.get() - unavailable == 1
    due = await store.redis.zscore(store.keys.of(broken["id"]).schedule, broken["id"])
    assert due is not None and due - leased.now_ms < 5_000  # put off briefly, not to its lease


@pytest.mark.parametrize("failing", ["the host's state", "the round trip"])
async def test_a_budget_that_cannot_be_taken_still_ends_the_watch_at_its_deadline(
    store: Store, book: HostBook, upstream: tuple[str, list[float]], failing: str
) -> None:
    url, hits = upstream
    doc, _ = await store.register(TENANT, spec_of(url), 0.3)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())
        if failing == "the host's state":
            await store.redis.set(store.keys.host("127.0.0.1"), "corrupt")
        else:

            async def down(*args: Any) -> Any:
                raise RedisConnectionError("Connection reset by peer")

            poller.budget.book.take = down  # type: ignore[method-assign]
        ended = await poll_until_it_ends(store, poller, doc)

    assert not hits
    assert ended["state"] == "timeout" and ended["reason"] == "deadline reached"
    assert ended["attempts"] == 0
    assert "budget could not be read" in ended["last_error"]
    assert ended["finished_at"] - ended["deadline"] < 1000


async def test_a_store_error_while_taking_the_budget_puts_the_poll_off(
    store: Store, book: HostBook, upstream: tuple[str, list[float]]
) -> None:
    """Fail closed: no request without a budget; the worker carries on, no attempt spent."""
    url, hits = upstream
    doc, _ = await store.register(TENANT, spec_of(url), 60)
    deferred = {r: POLLS_DEFERRED.labels(r)._value.get() for r in ("budget", "budget_unavailable")}
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())

        async def failing(hosts: Any, *args: Any) -> Any:
            raise RedisConnectionError("Connection reset by peer")

        poller.budget.book.take = failing  # type: ignore[method-assign]
        leased = await claim(store)
        poller.sync_clock(leased.now_ms)
        (claimed,) = leased.watches
        poller.keeper.hold(claimed)
        await poller._handle(claimed)

    assert not hits
    assert (await store.get(TENANT, doc["id"]))["attempts"] == 0
    due = await store.redis.zscore(store.keys.of(doc["id"]).schedule, doc["id"])
    assert due is not None and due - leased.now_ms < 5_000  # released, not left to its lease
    assert await store.redis.hget(store.keys.of(doc["id"]).leases, doc["id"]) is None
    # Counted apart from polls over budget: a store error is no sign of a busy host.
    assert POLLS_DEFERRED.labels("budget")._value.get() == deferred["budget"]
    assert (
        POLLS_DEFERRED.labels("budget_unavailable")._value.get()
        == deferred["budget_unavailable"] + 1
    )
