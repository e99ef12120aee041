"""Server-Sent Events of a watch (issue 9, item 3): the stream generator against the store
(fakeredis and real Redis) with a simulated worker, and the route's edges in process."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import fakeredis
import pytest
from redis.asyncio.cluster import RedisCluster

from service.api.schemas import WatchCreate
from service.api.sse import parse_event_id, stream, tenant_stream
from service.settings import Settings
from service.store import pubsub
from service.store.connection import subscriber
from service.store.pubsub import MAX_QUEUED_IDS, EventHub, Follower
from service.store.watches import Store
from tests.service_fixtures import ApiFactory

from .test_store import TENANT, claim_one, save

SPEC = WatchCreate.model_validate({"status_url": "http://translate-1:5000/status"}).spec()


def parse(raw: str) -> list[dict[str, Any]]:
    """The events of an SSE text (comments and `retry:` skipped)."""
    events = []
    for block in raw.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if not line.startswith((":", "retry"))
        )
        if fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


async def collect(agen: Any, into: list[str]) -> None:
    async for chunk in agen:
        into.append(chunk)


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_stream_follows_a_watch_from_pending_to_completed(store: Store) -> None:
    doc, _ = await store.register(TENANT, SPEC, 3600)
    hub = EventHub(store.redis, store.keys)
    chunks: list[str] = []
    following = asyncio.create_task(collect(stream(store, hub, TENANT, doc, None), chunks))
    try:
        await wait_for(lambda: len(parse("".join(chunks))) == 1)
        claimed = await claim_one(store)
        polled = copy.deepcopy(claimed.doc)
        now = await store.server_time_ms()
        polled.update(attempts=1, last_polled_at=now, updated_at=now, next_poll_at=now + 60_000)
        polled["last_result"] = "pending"
        assert await save(store, claimed, polled)
        await wait_for(lambda: len(parse("".join(chunks))) == 2)
        again = (await store.schedule.claim(10, 30, "t2", None)).watches
        assert again == []  # not due: finish it through a fresh claim after making it due
        await store.redis.zadd(store.keys.of(claimed.id).schedule, {claimed.id: now})
        second = await claim_one(store)
        done = copy.deepcopy(second.doc)
        later = await store.server_time_ms() + 1
        done.update(attempts=2, last_polled_at=later, updated_at=later, finished_at=later)
        done.update(state="completed", last_result="completed", next_poll_at=None)
        assert await save(store, second, done)
        await asyncio.wait_for(following, 5)
    finally:
        following.cancel()
        await hub.aclose()

    events = parse("".join(chunks))
    assert [(e["event"], e["data"]["state"], e["data"]["attempts"]) for e in events] == [
        ("state", "pending", 0),
        ("poll", "pending", 1),
        ("poll", "completed", 2),
        ("state", "completed", 2),
    ]
    ids = [parse_event_id(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 4


async def test_resuming_after_an_event_sends_only_later_ones(store: Store) -> None:
    doc, _ = await store.register(TENANT, SPEC, 3600)
    cancelled = await store.cancel(TENANT, doc["id"])
    hub = EventHub(store.redis, store.keys)
    try:
        fresh = [c async for c in stream(store, hub, TENANT, cancelled, None)]
        (last,) = parse("".join(fresh))
        after = parse_event_id(last["id"])
        resumed = [c async for c in stream(store, hub, TENANT, cancelled, after)]
        before = (doc["created_at"] - 1, 1)  # the cancel may share the creation's millisecond
        older = [c async for c in stream(store, hub, TENANT, cancelled, before)]
    finally:
        await hub.aclose()

    assert last["event"] == "state" and last["data"]["state"] == "cancelled"
    assert parse("".join(resumed)) == []
    assert [e["event"] for e in parse("".join(older))] == ["state"]


@pytest.mark.parametrize("value", [None, "", "x", "12-3", "-1", "1-", "9" * 17 + "-0", "1-0-0"])
def test_a_malformed_last_event_id_starts_afresh(value: str | None) -> None:
    assert parse_event_id(value) is None


async def test_the_route_streams_a_finished_watch_and_ends(make_api: ApiFactory) -> None:
    api = await make_api()
    created = (await api.post("/v1/watches", json={"status_url": SPEC["status_url"]})).json()
    await api.delete(f"/v1/watches/{created['id']}")

    whole = await api.get(f"/v1/watches/{created['id']}/events")
    (event,) = parse(whole.text)
    resumed = await api.get(
        f"/v1/watches/{created['id']}/events", headers={"Last-Event-ID": event["id"]}
    )
    by_query = await api.get(
        f"/v1/watches/{created['id']}/events", params={"last_event_id": event["id"]}
    )

    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    assert event["event"] == "state" and event["data"]["state"] == "cancelled"
    assert parse(resumed.text) == [] and parse(by_query.text) == []
    assert (await api.get("/v1/watches/w_000000000000nosuchwatch/events")).status_code == 404


async def test_a_tenant_stream_sees_its_own_watches_registered_and_ended_only(
    store: Store,
) -> None:
    hub = EventHub(store.redis, store.keys)
    chunks: list[str] = []
    mine = asyncio.create_task(collect(tenant_stream(store, hub, TENANT), chunks))
    late: list[str] = []  # a second stream of the tenant, opened once the channel is live
    try:
        await wait_for(lambda: "event: ready" in "".join(chunks))
        second = asyncio.create_task(collect(tenant_stream(store, hub, TENANT), late))
        await wait_for(lambda: "event: ready" in "".join(late))
        second.cancel()
        doc, _ = await store.register(TENANT, SPEC, 3600)
        theirs, _ = await store.register("someone-else", SPEC, 3600)
        await store.cancel("someone-else", theirs["id"])
        await wait_for(lambda: len(parse("".join(chunks))) == 2)  # each event reads the watch
        await store.cancel(TENANT, doc["id"])
        await wait_for(lambda: len(parse("".join(chunks))) == 3)
    finally:
        mine.cancel()
        await hub.aclose()

    events = parse("".join(chunks))
    assert [e["event"] for e in events] == ["ready", "watch", "watch"]
    assert [(e["data"]["id"], e["data"]["state"]) for e in events[1:]] == [
        (doc["id"], "pending"),
        (doc["id"], "cancelled"),
    ]
    assert theirs["id"] not in "".join(chunks)


def test_a_follower_too_far_behind_is_told_to_resync() -> None:
    follower = Follower()
    for n in range(MAX_QUEUED_IDS + 5):
        follower.notify(f"w{n % (MAX_QUEUED_IDS + 1)}")
    follower.notify("")  # a wake without an id queues nothing

    assert follower.changed.is_set() and follower.overflowed
    ids = follower.take_ids()
    assert len(ids) == MAX_QUEUED_IDS and len(set(ids)) == len(ids)
    assert follower.take_ids() == []


async def test_the_tenant_stream_route_needs_a_key(make_api: ApiFactory) -> None:
    settings = Settings(api_keys="acme:acme-key-0123456789")
    api = await make_api(settings)

    refused = await api.get("/v1/events")

    assert refused.status_code == 401


def test_a_follower_resubscribed_after_a_gap_is_told_it_may_have_missed_changes() -> None:
    follower = Follower()
    follower.subscribed()
    assert follower.changed.is_set() and not follower.overflowed  # the first start: `ready`
    follower.changed.clear()

    follower.subscribed()  # the connection was lost and made again

    assert follower.changed.is_set() and follower.overflowed  # `resync`


async def test_a_tenant_stream_says_resync_when_its_subscription_was_lost(store: Store) -> None:
    if isinstance(store.redis, fakeredis.FakeAsyncRedis):
        pytest.skip("fakeredis has no CLIENT KILL: the real Redis run covers this")
    hub = EventHub(store.redis, store.keys)
    chunks: list[str] = []
    following = asyncio.create_task(collect(tenant_stream(store, hub, TENANT), chunks))
    try:
        await wait_for(lambda: "event: ready" in "".join(chunks))
        # A dropped connection (on a cluster: on whichever node the hub subscribed to).
        everywhere = {"target_nodes": "all"} if isinstance(store.redis, RedisCluster) else {}
        await store.redis.client_kill_filter(_type="pubsub", **everywhere)
        await wait_for(lambda: "event: resync" in "".join(chunks), 10)
        doc, _ = await store.register(TENANT, SPEC, 3600)  # and live again after it
        await wait_for(lambda: doc["id"] in "".join(chunks))
    finally:
        following.cancel()
        await hub.aclose()


async def _save_a_poll(store: Store) -> str:
    """Claim the one due watch and save a pending poll of it; returns its id."""
    claimed = await claim_one(store)
    polled = copy.deepcopy(claimed.doc)
    now = await store.server_time_ms()
    polled.update(attempts=polled["attempts"] + 1, last_polled_at=now, updated_at=now)
    polled.update(next_poll_at=now, last_result="pending")  # due again at once
    assert await save(store, claimed, polled)
    return claimed.id


async def test_polls_are_published_only_while_a_stream_of_their_partition_is_open(
    store: Store,
) -> None:
    """On a cluster a PUBLISH reaches every node: a poll nobody follows is not published; once
    a stream follows a watch of the partition (the hub marks it), every poll there is."""
    doc, _ = await store.register(TENANT, SPEC, 3600)
    channel = store.keys.events_prefix + doc["id"]
    pubsub = await subscriber(store.redis)  # on a cluster: any node hears every PUBLISH
    await pubsub.subscribe(channel)

    async def messages(seconds: float) -> list[Any]:
        heard = []
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            message = await pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "message":
                heard.append(message["channel"])
        return heard

    hub = EventHub(store.redis, store.keys)
    try:
        await _save_a_poll(store)
        unheard = await messages(0.5)
        with hub.follow(doc["id"]) as follower:
            await asyncio.wait_for(follower.changed.wait(), 5)  # subscribed (and marked)
            ttl_ms = await store.redis.pttl(store.keys.of(doc["id"]).listening)
            await _save_a_poll(store)
            heard = await messages(0.5)
    finally:
        await pubsub.aclose()
        await hub.aclose()

    assert unheard == []
    assert 0 < ttl_ms <= 30_000
    assert heard == [channel]


async def test_a_followed_partition_stays_marked_past_one_mark(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark expires on its own (an API process may die), so the hub renews it for as long
    as a stream follows a watch of the partition."""
    monkeypatch.setattr(pubsub, "MARK_SECONDS", 0.3)
    monkeypatch.setattr(pubsub, "MARK_REFRESH_SECONDS", 0.1)
    doc, _ = await store.register(TENANT, SPEC, 3600)
    marker = store.keys.of(doc["id"]).listening
    hub = EventHub(store.redis, store.keys)
    try:
        with hub.follow(doc["id"]) as follower:
            await asyncio.wait_for(follower.changed.wait(), 5)
            await asyncio.sleep(1.0)  # three marks' lifetimes
            still_marked = await store.redis.exists(marker)
    finally:
        await hub.aclose()

    assert still_marked == 1
