"""A watch's event stream under hostile timing and input (review fixes): its end is always the
last thing a stream sends, whatever the ids of the events say (a worker's clock ahead of Redis's,
a registration and an end in the same millisecond), and a `Last-Event-ID` of non-ASCII digits
is a malformed id (the stream starts afresh), not a 500."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest

from service.api.sse import parse_event_id, stream
from service.domain import WatchDoc
from service.store.pubsub import EventHub
from service.store.watches import Store

from .fakes import until
from .test_events import SPEC, collect, parse
from .test_store import TENANT, claim_one, save


async def _ended_in_the_creation_millisecond(store: Store, doc: WatchDoc) -> WatchDoc:
    """Save `doc`'s one poll, and its end, stamped with the millisecond it was registered in."""
    claimed = await claim_one(store)
    done = copy.deepcopy(claimed.doc)
    at = doc["created_at"]
    done.update(attempts=1, last_polled_at=at, updated_at=at, finished_at=at)
    done.update(state="completed", last_result="completed", next_poll_at=None)
    assert await save(store, claimed, done)
    return await store.get(TENANT, doc["id"])


async def test_a_cancel_stamped_before_the_last_poll_still_ends_the_stream(store: Store) -> None:
    """A worker's estimate of the Redis clock may run ahead: its poll's id then sorts after the
    cancel's (stamped by Redis). The stream still sends the cancel, and last."""
    doc, _ = await store.register(TENANT, SPEC, 3600)
    hub = EventHub(store.redis, store.keys)
    chunks: list[str] = []
    following = asyncio.create_task(collect(stream(store, hub, TENANT, doc, None), chunks))
    try:
        await until(lambda: len(parse("".join(chunks))) == 1)
        claimed = await claim_one(store)
        polled = copy.deepcopy(claimed.doc)
        ahead = await store.server_time_ms() + 60_000  # the worker's clock, a minute ahead
        polled.update(attempts=1, last_polled_at=ahead, updated_at=ahead, next_poll_at=ahead)
        polled["last_result"] = "pending"
        assert await save(store, claimed, polled)
        await until(lambda: len(parse("".join(chunks))) == 2)
        await store.cancel(TENANT, doc["id"])
        await asyncio.wait_for(following, 5)
    finally:
        following.cancel()
        await hub.aclose()

    events = parse("".join(chunks))
    assert [(e["event"], e["data"]["state"]) for e in events] == [
        ("state", "pending"),
        ("poll", "pending"),
        ("state", "cancelled"),
    ]


async def test_an_end_in_the_registration_millisecond_ends_a_live_stream(store: Store) -> None:
    doc, _ = await store.register(TENANT, SPEC, 3600)
    hub = EventHub(store.redis, store.keys)
    chunks: list[str] = []
    following = asyncio.create_task(collect(stream(store, hub, TENANT, doc, None), chunks))
    try:
        await until(lambda: len(parse("".join(chunks))) == 1)
        await _ended_in_the_creation_millisecond(store, doc)
        await asyncio.wait_for(following, 5)
    finally:
        following.cancel()
        await hub.aclose()

    events = parse("".join(chunks))
    assert [(e["event"], e["data"]["state"]) for e in events] == [
        ("state", "pending"),
        ("state", "completed"),
    ]
    assert len({e["id"] for e in events}) == 2  # the registration and the end: two ids


async def test_resuming_after_the_registration_gets_an_end_of_the_same_millisecond(
    store: Store,
) -> None:
    """The caller saw the pending state, the connection dropped, the watch ended in the same
    millisecond: the resumed stream sends the end (and its poll), not nothing."""
    doc, _ = await store.register(TENANT, SPEC, 3600)
    hub = EventHub(store.redis, store.keys)
    first: list[str] = []
    following = asyncio.create_task(collect(stream(store, hub, TENANT, doc, None), first))
    try:
        await until(lambda: len(parse("".join(first))) == 1)
        following.cancel()  # the connection drops
        (registered,) = parse("".join(first))
        ended = await _ended_in_the_creation_millisecond(store, doc)
        resumed = [
            c async for c in stream(store, hub, TENANT, ended, parse_event_id(registered["id"]))
        ]
        (end,) = [e for e in parse("".join(resumed)) if e["event"] == "state"]
        after_the_end = [
            c async for c in stream(store, hub, TENANT, ended, parse_event_id(end["id"]))
        ]
    finally:
        following.cancel()
        await hub.aclose()

    assert registered["data"]["state"] == "pending"
    assert [(e["event"], e["data"]["state"]) for e in parse("".join(resumed))][-1] == (
        "state",
        "completed",
    )
    assert parse("".join(after_the_end)) == []  # resumed after the end itself: nothing more


@pytest.mark.parametrize("value", ["²-1", "¹-0", "1²-1", "١٢-0", "1-¹", "12-1\u00a0x"])
def test_ids_of_non_ascii_digits_are_malformed(value: str) -> None:
    assert parse_event_id(value) is None


@pytest.mark.parametrize("value", ["²-1", "¹-0", "١٢-1"])
async def test_a_non_ascii_last_event_id_starts_the_stream_afresh(
    api: httpx.AsyncClient, value: str
) -> None:
    created = (await api.post("/v1/watches", json={"status_url": SPEC["status_url"]})).json()
    await api.delete(f"/v1/watches/{created['id']}")
    url = f"/v1/watches/{created['id']}/events"

    fresh = await api.get(url)
    by_header = await api.get(url, headers={"Last-Event-ID": value.encode("utf-8")})
    by_latin1_header = await api.get(url, headers={"Last-Event-ID": _latin1(value)})
    by_query = await api.get(url, params={"last_event_id": value})

    for answer in (by_header, by_latin1_header, by_query):
        assert answer.status_code == 200, answer.text
        assert parse(answer.text) == parse(fresh.text)
        assert [e["data"]["state"] for e in parse(answer.text)] == ["cancelled"]


def _latin1(value: str) -> bytes:
    """`value` as a client sending Latin-1 header bytes would (UTF-8 where Latin-1 cannot)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
