"""Review fixes of the worker, each against the real pieces (the store on fakeredis and on the
real Redis, the real `Poller` and claim loop, an upstream served on loopback):

1. a watch cancelled while a worker holds it is no lease lost (`vtwatch_leases_ended_total`,
   not `vtwatch_lease_lost_total`, whose alert says workers stall past their leases).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from service.models import WatchCreate
from service.settings import Settings
from service.store import Store
from tests.fakes import served, until
from worker.budget import GRANTED
from worker.poller import Poller

from .test_store import TENANT, claim, claim_one

# The store on fakeredis and on the real Redis (the cluster's run is the contract suite's).
STORES = pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)


def poller_settings(**values: Any) -> Settings:
    """Fast polls; the fleet-wide host budget out of the way."""
    return Settings.model_validate(
        {"min_poll_interval": 0.05, "host_rate_limit": 1000, "host_burst": 1000, **values}
    )


def new_poller(store: Store, session: aiohttp.ClientSession, **values: Any) -> Poller:
    """A poller whose every request the fleet-wide budget admits (these tests are not about
    it)."""
    poller = Poller(store, session, poller_settings(**values))
    poller.budget.spend_credit = lambda *args: GRANTED  # type: ignore[method-assign]
    return poller


def spec_of(url: str, **policy: Any) -> dict[str, Any]:
    return WatchCreate.model_validate({"status_url": url, "policy": policy}).spec()


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@dataclass
class HeldUpstream:
    """A status URL whose requests wait for `answer` to be set, then say `result`."""

    url: str = ""
    result: str = "pending"
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0


@pytest.fixture
async def held() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()

    async def status(request: web.Request) -> web.Response:
        upstream.arrived += 1
        await upstream.answer.wait()
        return web.json_response({"result": upstream.result})

    app = web.Application()
    app.router.add_get("/status", status)
    async with served(app) as base:
        upstream.url = f"{base}/status"
        yield upstream
        upstream.answer.set()


# -- 1. a cancel is no lease lost ----------------------------------------------------------------


@STORES
@pytest.mark.parametrize("keeper_first", [False, True], ids=["write-refused", "keeper-found"])
async def test_a_cancel_while_the_poller_holds_the_watch_is_an_ended_lease_not_a_lost_one(
    store: Store, held: HeldUpstream, keeper_first: bool
) -> None:
    """The poll is in flight when the watch is cancelled (as `DELETE /v1/watches/{id}` does);
    its write is refused by the fence, or the keeper finds the lease gone first: either way
    the watch ended, no other worker took it."""
    doc, _ = await store.register(TENANT, spec_of(held.url), 60)
    lost, ended = counter("vtwatch_lease_lost_total"), counter("vtwatch_leases_ended_total")
    async with aiohttp.ClientSession() as session:
        poller = new_poller(store, session)
        claimed = await claim_one(store)
        poller.sync_clock(await store.server_time_ms())
        poller.keeper.hold(claimed)
        handling = asyncio.create_task(poller._handle(claimed))
        await until(lambda: held.arrived == 1)

        cancelled = await store.cancel(TENANT, doc["id"])
        if keeper_first:
            await poller.keeper.extend_all()
            assert poller.keeper.taken(claimed)
        held.answer.set()
        await asyncio.wait_for(handling, 5)

    after = await store.get(TENANT, doc["id"])
    assert cancelled["state"] == after["state"] == "cancelled" and after["attempts"] == 0
    assert counter("vtwatch_lease_lost_total") == lost
    assert counter("vtwatch_leases_ended_total") == ended + 1
    assert not poller.keeper.held


@STORES
async def test_a_lease_taken_by_another_claim_is_still_a_lost_lease(
    store: Store, held: HeldUpstream
) -> None:
    """The other side of the fence: the lease lapsed and another worker claimed the watch."""
    doc, _ = await store.register(TENANT, spec_of(held.url), 60)
    lost, ended = counter("vtwatch_lease_lost_total"), counter("vtwatch_leases_ended_total")
    async with aiohttp.ClientSession() as session:
        poller = new_poller(store, session)
        claimed = await claim_one(store, lease_seconds=0.2)
        poller.sync_clock(await store.server_time_ms())
        poller.keeper.hold(claimed)
        handling = asyncio.create_task(poller._handle(claimed))
        await until(lambda: held.arrived == 1)

        taken: list[Any] = []

        async def claim_again() -> None:
            while not taken:
                taken.extend((await claim(store)).watches)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(claim_again(), 5)
        held.answer.set()
        await asyncio.wait_for(handling, 5)

    assert [c.id for c in taken] == [doc["id"]]
    assert (await store.get(TENANT, doc["id"]))["attempts"] == 0  # the write was refused
    assert counter("vtwatch_lease_lost_total") == lost + 1
    assert counter("vtwatch_leases_ended_total") == ended
