"""Server-Sent Events of one watch: `event: poll` per observed poll, `event: state` per state
change, each with an `id:` and the Watch as JSON `data:`; heartbeat comments; the stream ends
after the terminal state.

Nothing is kept in Redis for this: the scripts that save a watch PUBLISH on that watch's channel,
and one Pub/Sub connection per API process (`EventHub`, in service/store/pubsub.py), subscribed to
the watches its streams follow, wakes them; a woken stream reads the watch once and emits what
changed. A stream also re-reads on every heartbeat, so a missed notification (a lost subscription)
delays an event by one heartbeat at most. Event ids are `<ms>-<kind>` (kind 0 a poll, 1 the pending
state, 2 the end), ordered like the events: `Last-Event-ID` resumes after one; a resumed stream
whose polls it missed gets the latest poll (the current snapshot), since older ones are not kept. A
stream of a watch that ended always closes with its end (`event: state`), unless it resumed after
exactly that event: the end's id need not sort last (a poll is stamped by a worker's estimate of
the Redis clock, a cancel by Redis itself), and the end has a kind of its own so that it never
shares an id with the registration of the same millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from ..domain import WatchDoc, WatchState
from ..errors import WatchNotFound
from ..store.codec import watch_json
from ..store.pubsub import EventHub
from ..store.watches import Store
from .responses import json_bytes

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
EventKey = tuple[int, int]
POLL, STATE, END = 0, 1, 2  # the kinds of event ids
EVENT_ID = re.compile(r"([0-9]{1,16})-([012])")  # ASCII: isdigit() takes "²", int() does not


def parse_event_id(value: str | None) -> EventKey | None:
    """`<ms>-<kind>` as sent in `id:`; None for anything else (then the stream starts afresh)."""
    match = EVENT_ID.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    return int(match[1]), int(match[2])


def current_events(doc: WatchDoc) -> list[tuple[EventKey, str]]:
    """The events a document stands for now, in order: a pending watch's registration and its
    last poll (by id); an ended watch's last poll, then its end (whatever their ids)."""
    polls: list[tuple[EventKey, str]] = []
    if doc["attempts"] and doc["last_polled_at"] is not None:
        polls.append(((doc["last_polled_at"], POLL), "poll"))
    if doc["state"] == WatchState.PENDING:
        return sorted([*polls, ((doc["created_at"], STATE), "state")])
    ended_at = doc["finished_at"] if doc["finished_at"] is not None else doc["created_at"]
    return [*polls, ((ended_at, END), "state")]


def format_event(key: EventKey, name: str, doc: WatchDoc) -> str:
    data = json_bytes(watch_json(doc)).decode()
    return f"id: {key[0]}-{key[1]}\nevent: {name}\ndata: {data}\n\n"


async def stream(
    store: Store, hub: EventHub, tenant: str, doc: WatchDoc, after: EventKey | None
) -> AsyncIterator[str]:
    """The event stream of one watch, from `doc` (already read for this tenant) on."""
    yield f"retry: {int(HEARTBEAT_SECONDS * 1000)}\n\n"
    with hub.follow(doc["id"]) as follower:
        changed = follower.changed
        sent = after
        if sent is None:  # a fresh stream starts with the watch as it is now
            sent, _ = current_events(doc)[-1]
            yield format_event(sent, "state", doc)
            if doc["state"] != WatchState.PENDING:
                return
        while True:
            if doc["state"] != WatchState.PENDING:  # its end closes the stream, whatever its id
                *polls, (end, _) = current_events(doc)
                if end != after:  # (unless the caller resumed after the end itself)
                    for key, name in polls:
                        if key > sent:
                            yield format_event(key, name, doc)
                    yield format_event(end, "state", doc)
                return
            for key, name in current_events(doc):
                if key > sent:
                    yield format_event(key, name, doc)
                    sent = key
            if hub.closed:
                return
            try:  # (not `wait_for`: a task of its own per wait, for each open stream)
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await changed.wait()
            except TimeoutError:
                yield ": heartbeat\n\n"
            changed.clear()
            if hub.closed:
                yield ": the server is shutting down; reconnect with Last-Event-ID\n\n"
                return
            try:
                doc = await store.get(tenant, doc["id"])
            except WatchNotFound:
                return  # deleted (retention): nothing more will happen
            except (RedisError, OSError) as exc:  # say so, try again at the next heartbeat
                logger.debug("event stream of %s: reading the watch failed: %s", doc["id"], exc)
                yield ": storage unavailable, retrying\n\n"


async def tenant_stream(store: Store, hub: EventHub, tenant: str) -> AsyncIterator[str]:
    """Every watch of the tenant as it is registered, ends, or has a webhook attempt or retry
    (`event: watch`, the Watch as `data:`; no polls). `event: ready` says the subscription is
    live (read the list then: nothing after it is missed); `event: resync` says changes came
    faster than this stream could follow (read the list again). Not resumable: after a
    reconnect, wait for `ready` and read the list."""
    yield f"retry: {int(HEARTBEAT_SECONDS * 1000)}\n\n"
    with hub.follow("@" + tenant) as follower:
        ready = False
        while not hub.closed:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):
                    await follower.changed.wait()
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            follower.changed.clear()
            if hub.closed:
                break
            if not ready:  # the first wake comes when the subscription starts
                ready = True
                yield "event: ready\ndata: {}\n\n"
            if follower.overflowed:
                follower.overflowed = False
                follower.take_ids()
                yield "event: resync\ndata: {}\n\n"
                continue
            ids = follower.take_ids()
            try:
                docs = await store.get_many(tenant, ids)
            except (RedisError, OSError) as exc:
                logger.debug("the event stream of a tenant: reading watches failed: %s", exc)
                yield "event: resync\ndata: {}\n\n"  # the changes are lost: the list is not
                continue
            for doc in docs:
                yield f"event: watch\ndata: {json_bytes(watch_json(doc)).decode()}\n\n"
        yield ": the server is shutting down; reconnect\n\n"
