"""Two hardenings of the webhook dispatcher (`worker/dispatcher.py`):

- the status line alone decides: a receiver that answers 200 and then stalls its body has the
  webhook delivered at the first attempt (the body is drained for a second at most);
- a POST starts only on a lease confirmed for its whole timeout: a pause after the lease check
  (the process frozen while it fetched the signing secret) used to send a webhook whose lease
  had passed to another worker; now whatever needs Redis comes before the confirmation.

The real-process version of the second, a worker SIGSTOPped mid-delivery, is in
`tests/e2e/test_dispatcher_pause_e2e.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from service.api.schemas import WatchCreate
from service.settings import Settings
from service.store.outbox import Outbox, Secrets
from service.store.queue import Claimed
from service.store.watches import Store
from tests import test_webhooks
from worker.dispatcher import DRAIN_SECONDS, Dispatcher
from worker.loop import LeaseLost

from .fakes import served
from .service_fixtures import fake_redis
from .test_store import claim_one, save, terminal

# The in-process API, worker (fakeredis), simulator and verifying receiver of the webhook tests.
make_harness = test_webhooks.make_harness
STALL_SECONDS = 30.0  # far beyond every timeout here; the test's end releases it


@dataclass
class StallingReceiver:
    """Answers each POST with `status` and its headers at once, then sends no body until
    `release` is set (or `STALL_SECONDS` pass); records the client port of each POST."""

    status: int = 200
    release: asyncio.Event = field(default_factory=asyncio.Event)
    ports: list[int] = field(default_factory=list)
    stall: bool = True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        if not self.stall:
            return web.json_response({"ok": True}, status=self.status)
        return await stall_body(request, self.status, self.release)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        return app


async def stall_body(
    request: web.Request, status: int, release: asyncio.Event
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)  # the status line and headers go out now; no body byte
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(release.wait(), STALL_SECONDS)
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client has long gone
        await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def receiving(receiver: StallingReceiver) -> AsyncIterator[str]:
    """The receiver's hook URL; stalled answers are released before the server stops."""
    async with served(receiver.app()) as base:
        try:
            yield f"{base}/hooks"
        finally:
            receiver.release.set()


# -- 1. the status line decides ----------------------------------------------------------------


async def test_a_200_whose_body_stalls_is_delivered_at_the_first_attempt(
    make_harness: test_webhooks.HarnessFactory,
) -> None:
    """Through the whole service: the receiver answers 200 and then stalls its body past the
    webhook timeout. The webhook is `delivered` after one attempt, recorded as a 200 with the
    latency of the status line; it was `request timed out`, retried and ended `failed`."""
    harness = await make_harness()
    timeout = harness.settings.webhook_timeout

    async def stalled_200(n: int, request: web.Request) -> web.StreamResponse:
        return await stall_body(request, 200, harness.receiver.release)

    harness.receiver.reply = stalled_200
    watch = await harness.register()

    (attempt,) = await harness.wait_attempts(watch["id"], 1)
    assert (attempt["status_code"], attempt["error"]) == (200, None), attempt
    assert attempt["next_attempt_at"] is None
    assert attempt["latency_ms"] < timeout * 1000
    done = await harness.wait_webhook(watch["id"], "delivered")
    assert done["webhook"] == {"state": "delivered", "attempts": 1, "last_status_code": 200}
    assert len(await harness.deliveries(watch["id"])) == 1
    assert await harness.webhooks() == {"pending": 0, "delivered": 1, "failed": 0}
    assert len(harness.receiver.arrivals) == 1
    assert [a.error for a in harness.receiver.arrivals] == [None]  # signed and verified


@pytest.mark.parametrize(("status", "error"), [(200, None), (204, None), (500, "HTTP 500")])
async def test_a_stalled_body_costs_at_most_the_drain_time_not_the_webhook_timeout(
    status: int, error: str | None, no_vtw_env: None
) -> None:
    """With a 10 s webhook timeout, an answer whose body stalls is taken as it is (2xx a
    success, 500 a plain failure, neither a timeout) within about `DRAIN_SECONDS`."""
    settings = Settings(webhook_timeout=10.0)
    receiver = StallingReceiver(status)
    async with receiving(receiver) as url, aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(Outbox(fake_redis()), session, settings)
        started = time.monotonic()
        sent = await dispatcher._post(url, b"{}", {"content-type": "application/json"})
        took = time.monotonic() - started

    assert (sent.status_code, sent.error, sent.refused) == (status, error, False)
    assert sent.latency_ms < 1000 * DRAIN_SECONDS  # the status line came at once
    assert took < DRAIN_SECONDS + 2.0 < settings.webhook_timeout, took
    assert len(receiver.ports) == 1


async def test_a_short_body_is_read_so_the_next_webhook_reuses_the_connection(
    no_vtw_env: None,
) -> None:
    receiver = StallingReceiver(200, stall=False)
    async with receiving(receiver) as url, aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(Outbox(fake_redis()), session, Settings())
        sent = [await dispatcher._post(url, b"{}", {}) for _ in range(3)]

    assert [s.status_code for s in sent] == [200] * 3
    assert len(receiver.ports) == 3 and len(set(receiver.ports)) == 1, receiver.ports


# -- 2. a POST only on a lease confirmed for its whole timeout ----------------------------------


async def test_a_pause_before_the_post_that_outlasts_the_lease_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, no_vtw_env: None
) -> None:
    """The dispatcher stalls in the secret fetch (as a frozen process would: its lease keeper
    does not run either) until its lease has lapsed and another worker has claimed the
    delivery. It must then send nothing and report the lease lost; it used to POST."""
    settings = Settings(lease_seconds=0.6, webhook_timeout=0.2)
    receiver = StallingReceiver(200, stall=False)
    redis = fake_redis()
    store, outbox = Store(redis, namespace="paused"), Outbox(redis, namespace="paused")
    rival = Outbox(redis, namespace="paused")  # another worker's
    async with receiving(receiver) as url, aiohttp.ClientSession() as session:
        spec = WatchCreate.model_validate(
            {"status_url": "http://translate-1:5000/status", "webhook_url": url}
        ).spec()
        await store.register("acme", spec, 3600)
        polled = await claim_one(store)
        assert await save(store, polled, terminal(polled, "completed", "pending"))
        dispatcher = Dispatcher(outbox, session, settings)
        loop = asyncio.get_running_loop()
        claim_sent_at = loop.time()
        (claimed,) = (await outbox.queue.claim(1, dispatcher.lease_seconds, "paused")).watches
        dispatcher.keeper.hold(claimed, since=claim_sent_at)
        fetch, taken_over = outbox.secrets, list[Claimed]()

        async def paused_fetch(tenant: str) -> Secrets:
            found = await fetch(tenant)
            deadline = time.monotonic() + 10
            while not taken_over:
                assert time.monotonic() < deadline, "the lease never passed to the rival"
                taken_over.extend((await rival.queue.claim(1, 30, "rival")).watches)
                await asyncio.sleep(0.02)
            return found

        monkeypatch.setattr(outbox, "secrets", paused_fetch)
        (outcome,) = await asyncio.gather(dispatcher.handle(claimed), return_exceptions=True)

        attempts = await outbox.attempts(claimed.id)
    await redis.aclose()

    assert receiver.ports == [], "a webhook was POSTed on a lease another worker held"
    assert isinstance(outcome, LeaseLost), outcome
    assert [(c.id, c.token != claimed.token) for c in taken_over] == [(claimed.id, True)]
    assert dispatcher.keeper.taken(claimed)  # given up, not held on
    assert attempts == []  # and nothing recorded by the paused worker
