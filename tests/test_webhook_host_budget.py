"""Every webhook POST takes a token of its receiver host's fleet-wide budget
(`VTW_WEBHOOK_HOST_RATE_LIMIT`, `worker/dispatcher.py` over `worker/budget.py`, kind "r"):

- one tenant's flood of webhooks reaches its receiver at the budget's rate (never more than
  limit + burst + 2 in any second), each delivered exactly once at its first attempt: a
  delivery put off by the budget spends no attempt;
- the budget is shared fairly: another tenant's few webhooks to the same receiver go out within
  about two seconds while the flood is still draining;
- a store error while taking the budget puts the delivery off (no POST, no attempt) until the
  budget can be taken again;
- the token is taken before the lease is confirmed: a take that stalls until the lease has
  passed to another worker sends nothing.

Each runs against fakeredis and the real Redis, with a dispatcher alone (no poller) and a
receiver on loopback; the webhooks are queued as a poller would (terminal saves).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api.schemas import WatchCreate
from service.domain import WebhookDoc
from service.metrics import WEBHOOKS_DEFERRED
from service.settings import Settings
from service.store.outbox import Outbox
from service.store.queue import Claimed
from service.store.watches import Store
from worker.dispatcher import Dispatcher
from worker.loop import LeaseLost
from worker.spec import normalized_host

from .fakes import served
from .service_fixtures import delete_namespace, fake_redis, real_redis_or_skip
from .test_store import terminal

STATUS_URL = "http://translate-1:5000/status"
LIMIT = 10  # VTW_WEBHOOK_HOST_RATE_LIMIT of these tests; the default burst: 1


def deferred(reason: str) -> float:
    value: float = WEBHOOKS_DEFERRED.labels(reason)._value.get()
    return value


@pytest.fixture(params=["fakeredis", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A store in a fresh namespace of fakeredis or the real Redis (keys deleted after)."""
    if request.param == "fakeredis":
        client: aioredis.Redis = fake_redis()
    else:
        client = await real_redis_or_skip(decode_responses=True)
    namespace = "t" + secrets.token_hex(6)
    try:
        yield Store(client, namespace=namespace)
    finally:
        await delete_namespace(client, namespace)
        await client.aclose()


@dataclass
class Receiver:
    """Answers every webhook 200; notes when each webhook-id arrived."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.arrivals.append((time.monotonic(), request.headers["webhook-id"]))
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        return app

    def times(self, ids: list[str]) -> list[float]:
        wanted = {f"msg_{watch_id}" for watch_id in ids}
        return [at for at, msg in self.arrivals if msg in wanted]


def most_in_a_second(times: list[float]) -> int:
    """The most arrivals within any window of one second."""
    times = sorted(times)
    counts = (sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    return max(counts, default=0)


async def queue_webhooks(store: Store, tenant: str, n: int, url: str) -> list[str]:
    """`n` watches of `tenant` finished as a poller would (webhook pending, due now)."""
    spec = WatchCreate.model_validate({"status_url": STATUS_URL, "webhook_url": url}).spec()
    ids = [(await store.register(tenant, spec, 3600))[0]["id"] for _ in range(n)]
    claimed: list[Claimed] = []
    deadline = time.monotonic() + 10
    while len(claimed) < n:
        assert time.monotonic() < deadline, f"claimed {len(claimed)} of {n}"
        claimed += (await store.schedule.claim(n, 30, secrets.token_hex(4))).watches
    saved = await store.save([(c, terminal(c, "completed", "pending")) for c in claimed])
    assert all(saved) and {c.id for c in claimed} == set(ids)
    return ids


@asynccontextmanager
async def dispatching(store: Store, settings: Settings) -> AsyncIterator[Dispatcher]:
    """A dispatcher's claim loop running on the store's outbox until the block ends."""
    outbox = Outbox(store.redis, namespace=store.keys.namespace)
    async with aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(outbox, session, settings)
        task = asyncio.create_task(dispatcher.run(grace_seconds=2.0))
        try:
            yield dispatcher
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 15)


async def webhook_of(store: Store, tenant: str, watch_id: str) -> WebhookDoc:
    return (await store.get(tenant, watch_id))["webhook"]


async def until_delivered(
    store: Store, tenant: str, ids: list[str], seconds: float
) -> dict[str, WebhookDoc]:
    deadline = time.monotonic() + seconds
    while True:
        webhooks = {i: await webhook_of(store, tenant, i) for i in ids}
        if all(w["state"] == "delivered" for w in webhooks.values()):
            return webhooks
        states = [w["state"] for w in webhooks.values()]
        assert time.monotonic() < deadline, f"not all delivered in {seconds} s: {states}"
        await asyncio.sleep(0.1)


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"VTW_{name.upper()}", value)
    return Settings()


def test_the_receivers_budget_settings(no_vtw_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings()
    assert default.webhook_host_rate_limit == 50 and default.webhook_host_burst_size == 2.5
    assert settings_from_env(monkeypatch, webhook_host_rate_limit="10").webhook_host_burst_size == 1
    tuned = settings_from_env(monkeypatch, webhook_host_rate_limit="200", webhook_host_burst="7")
    assert (tuned.webhook_host_rate_limit, tuned.webhook_host_burst_size) == (200, 7)
    for bad in ("0", "-1", "nan", "2000000"):
        monkeypatch.setenv("VTW_WEBHOOK_HOST_RATE_LIMIT", bad)
        with pytest.raises(ValidationError):
            Settings()


async def test_a_flood_of_one_tenant_reaches_its_receiver_at_the_budgets_rate_once_each(
    store: Store, no_vtw_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 webhooks due at once, `VTW_WEBHOOK_HOST_RATE_LIMIT=10` (burst 1): at most 13 reach the
    receiver in any second, so they take about 6 s; each arrives once and is recorded as one
    attempt (the budget's deferrals are none); the budget is the receiver's (kind "r"), not
    the upstream budget of the same host."""
    settings = settings_from_env(monkeypatch, webhook_host_rate_limit=str(LIMIT))
    burst = settings.webhook_host_burst_size
    receiver = Receiver()
    before = deferred("budget")
    async with served(receiver.app()) as base, dispatching(store, settings):
        ids = await queue_webhooks(store, "acme", 60, f"{base}/hooks")
        webhooks = await until_delivered(store, "acme", ids, 30)

    times = receiver.times(ids)
    assert sorted(msg for _, msg in receiver.arrivals) == sorted(f"msg_{i}" for i in ids)
    assert most_in_a_second(times) <= LIMIT + burst + 2, most_in_a_second(times)
    assert max(times) - min(times) >= (60 - burst) / LIMIT * 0.9  # the budget did hold them
    assert all(w["attempts"] == 1 and w["last_status_code"] == 200 for w in webhooks.values())
    outbox = Outbox(store.redis, namespace=store.keys.namespace)
    for watch_id in ids:
        assert [a["status_code"] for a in await outbox.attempts(watch_id)] == [200]
    assert deferred("budget") - before >= 60 - burst  # each put off at least once...
    host = normalized_host(base)
    assert await store.redis.exists(store.keys.host(host, "r"))  # ...by the receiver's budget
    assert not await store.redis.exists(store.keys.host(host))


async def test_a_few_webhooks_of_another_tenant_pass_a_flood_to_the_same_receiver(
    store: Store, no_vtw_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenant A's 100 webhooks drain at 10/s; B's 5, queued a second into the flood, get half
    of the budget and are all delivered within about 2 s, while most of A's still wait."""
    settings = settings_from_env(monkeypatch, webhook_host_rate_limit=str(LIMIT))
    receiver = Receiver()
    async with served(receiver.app()) as base, dispatching(store, settings):
        url = f"{base}/hooks"
        flood = await queue_webhooks(store, "a", 100, url)
        await asyncio.sleep(1.0)
        few = await queue_webhooks(store, "b", 5, url)
        queued_at = time.monotonic()
        await until_delivered(store, "b", few, 10)
        took = time.monotonic() - queued_at
        flood_done = len(receiver.times(flood))

    b_times = receiver.times(few)
    assert len(b_times) == 5
    assert max(b_times) - queued_at <= 2.2, (took, [t - queued_at for t in b_times])
    assert flood_done <= 60, flood_done  # A's were still draining when B's were all done
    # (a tenant alone would have had them all: A's 100 are at 10/s for 10 s)


async def test_a_store_error_while_taking_the_budget_puts_the_delivery_off_without_an_attempt(
    store: Store, no_vtw_env: None
) -> None:
    """No POST without the budget: the delivery goes back to the outbox with a short backoff,
    no attempt spent; once the budget can be taken it is delivered, one attempt."""
    receiver = Receiver()
    before = deferred("budget_unavailable")
    async with served(receiver.app()) as base, dispatching(store, Settings()) as dispatcher:
        book = dispatcher.budget.book
        working = book.take
        failures = 0

        async def failing(*args: Any, **kwargs: Any) -> Any:
            nonlocal failures
            failures += 1
            raise RedisConnectionError("Connection reset by peer")

        book.take = failing  # type: ignore[method-assign]
        (watch_id,) = await queue_webhooks(store, "acme", 1, f"{base}/hooks")
        deadline = time.monotonic() + 10
        while failures < 3:
            assert time.monotonic() < deadline, failures
            await asyncio.sleep(0.02)
        assert receiver.arrivals == []
        webhook = await webhook_of(store, "acme", watch_id)
        assert (webhook["state"], webhook["attempts"]) == ("pending", 0)
        assert deferred("budget_unavailable") - before >= 3
        book.take = working  # type: ignore[method-assign]
        webhooks = await until_delivered(store, "acme", [watch_id], 10)

    assert webhooks[watch_id]["attempts"] == 1
    assert [msg for _, msg in receiver.arrivals] == [f"msg_{watch_id}"]


async def test_the_token_is_taken_before_the_lease_is_confirmed(
    store: Store, no_vtw_env: None
) -> None:
    """A take that stalls (a slow Redis, a paused process) until the lease has lapsed and
    another worker claimed the delivery: nothing is sent and the lease is reported lost."""
    settings = Settings(lease_seconds=0.6, webhook_timeout=0.2)
    receiver = Receiver()
    outbox = Outbox(store.redis, namespace=store.keys.namespace)
    rival = Outbox(store.redis, namespace=store.keys.namespace)
    async with served(receiver.app()) as base, aiohttp.ClientSession() as session:
        (watch_id,) = await queue_webhooks(store, "acme", 1, f"{base}/hooks")
        dispatcher = Dispatcher(outbox, session, settings)
        sent_at = asyncio.get_running_loop().time()
        (claimed,) = (await outbox.queue.claim(1, dispatcher.lease_seconds, "paused")).watches
        dispatcher.keeper.hold(claimed, since=sent_at)
        take, taken_over = dispatcher.budget.book.take, list[Claimed]()

        async def stalled_take(*args: Any, **kwargs: Any) -> Any:
            granted = await take(*args, **kwargs)
            deadline = time.monotonic() + 10
            while not taken_over:
                assert time.monotonic() < deadline, "the lease never passed to the rival"
                taken_over.extend((await rival.queue.claim(1, 30, "rival")).watches)
                await asyncio.sleep(0.02)
            return granted

        dispatcher.budget.book.take = stalled_take  # type: ignore[method-assign]
        (outcome,) = await asyncio.gather(dispatcher.handle(claimed), return_exceptions=True)
        attempts = await outbox.attempts(watch_id)

    assert receiver.arrivals == [], "a webhook was POSTed on a lease another worker held"
    assert isinstance(outcome, LeaseLost), outcome
    assert [c.id for c in taken_over] == [watch_id]
    assert attempts == []
