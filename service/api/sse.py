"""Server-Sent Events of one watch: `event: poll` per observed poll, `event: state` per state
change, each with an `id:` and the Watch as JSON `data:`; heartbeat comments; the stream ends
after the terminal state.

Nothing is kept in Redis for this: the scripts that save a watch PUBLISH on that watch's
channel, and one Pub/Sub connection per API process (`EventHub`), subscribed to the watches its
streams follow, wakes them; a woken stream reads the watch once and emits what changed. A
stream also re-reads on every heartbeat, so a missed notification (a lost subscription) delays
an event by one heartbeat at most. Event ids are `<ms>-<kind>` (kind 0 a poll, 1 the pending
state, 2 the end), ordered like the events: `Last-Event-ID` resumes after one; a resumed stream
whose polls it missed gets the latest poll (the current snapshot), since older ones are not
kept. A stream of a watch that ended always closes with its end (`event: state`), unless it
resumed after exactly that event: the end's id need not sort last (a poll is stamped by a
worker's estimate of the Redis clock, a cancel by Redis itself), and the end has a kind of its
own so that it never shares an id with the registration of the same millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..domain import WatchDoc, WatchState
from ..errors import WatchNotFound
from ..store.connection import subscriber
from ..store.keys import Keys
from ..store.watches import Store
from .schemas import render_watch

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
LISTEN_TICK = 0.2  # how soon a new stream's subscription starts, at worst
MARK_SECONDS = 30.0  # a partition is `listening` this long after its last mark...
MARK_REFRESH_SECONDS = 10.0  # ...renewed this often while one of its watches is followed
EventKey = tuple[int, int]
POLL, STATE, END = 0, 1, 2  # the kinds of event ids
EVENT_ID = re.compile(r"([0-9]{1,16})-([012])")  # ASCII: isdigit() takes "²", int() does not
MAX_QUEUED_IDS = 1000  # a tenant stream further behind is told to resync (`event: resync`)


class Follower:
    """What one stream waits on: `changed` is set at each notification, and the watch ids
    the notifications carried (a tenant's channel carries them; a watch's carries none) queue
    in `ids`. `overflowed` says some may be missing: more than `MAX_QUEUED_IDS` queued, or the
    subscription was lost and made again (messages in between are gone)."""

    __slots__ = ("changed", "ids", "live", "overflowed")

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.ids: deque[str] = deque()
        self.overflowed = False
        self.live = False  # its channel's subscription has started at least once

    def subscribed(self) -> None:
        """Its channel's subscription (re)started: wake it; after a gap, say so."""
        if self.live:
            self.overflowed = True
        self.live = True
        self.notify("")

    def notify(self, payload: str) -> None:
        if payload:
            if len(self.ids) < MAX_QUEUED_IDS:
                self.ids.append(payload)
            else:
                self.overflowed = True
        self.changed.set()

    def take_ids(self) -> list[str]:
        """The ids queued since the last call, each once, oldest first."""
        ids = list(dict.fromkeys(self.ids))
        self.ids.clear()
        return ids


class EventHub:
    """One Pub/Sub connection per API process, subscribed to the channels its streams follow
    (a watch's, or a tenant's: `"@" + tenant`), and nothing while none is open, fanned out to
    those streams."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.channel_prefix = keys.events_prefix
        self._marked_at = 0.0  # monotonic time the partitions of followed watches were marked
        self._waiting: dict[str, set[Follower]] = {}
        self._subscribed: set[str] = set()  # channels whose subscription is live
        self._someone = asyncio.Event()  # set while anyone follows a channel
        self._resync = asyncio.Event()  # the set of followed watches changed
        self._listener: asyncio.Task[None] | None = None
        self.closed = False  # the server is shutting down: streams end

    def close_streams(self) -> None:
        """End every open stream now (shutdown), and any opened later."""
        self.closed = True
        self._wake_all()

    @contextlib.contextmanager
    def follow(self, channel: str) -> Iterator[Follower]:
        """Notified whenever `channel` (a watch id, or `"@" + tenant`) hears of a change, for
        the life of the block (and once when its subscription starts, so nothing saved before
        that is missed)."""
        follower = Follower()
        self._waiting.setdefault(channel, set()).add(follower)
        if channel in self._subscribed:  # live already: nothing before this can be missed
            follower.subscribed()
        self._someone.set()
        self._resync.set()
        if self._listener is None:
            # A context of its own: not the request's (its request id, for one).
            self._listener = asyncio.create_task(self._listen(), context=contextvars.Context())
        try:
            yield follower
        finally:
            waiting = self._waiting[channel]
            waiting.discard(follower)
            if not waiting:
                del self._waiting[channel]
                self._resync.set()

    async def _listen(self) -> None:
        """Relay notifications while anyone follows; back off and subscribe again after any
        error (streams meanwhile fall back on their heartbeats)."""
        failures = 0
        while True:
            await self._someone.wait()
            try:
                async with await subscriber(self.redis) as pubsub:
                    self._resync.set()
                    while self._waiting:
                        if self._resync.is_set():
                            self._resync.clear()
                            await self._sync(pubsub)
                            failures = 0
                        if time.monotonic() - self._marked_at >= MARK_REFRESH_SECONDS:
                            self._marked_at = time.monotonic()
                            await self._mark(self._subscribed)
                        message = await pubsub.get_message(timeout=LISTEN_TICK)
                        if message is not None:
                            channel = message["channel"][len(self.channel_prefix) :]
                            self._wake(channel, message["data"])
                    self._subscribed = set()  # before the connection closes: no one joins it
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning("event subscription failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
            finally:
                self._subscribed = set()  # that connection is gone, and its subscriptions
            if not self._waiting:
                self._someone.clear()

    async def _sync(self, pubsub: PubSub) -> None:
        """Subscribe to the channels followed now, unsubscribe from the others."""
        wanted = set(self._waiting)
        new, gone = wanted - self._subscribed, self._subscribed - wanted
        if gone:
            self._subscribed -= gone
            await pubsub.unsubscribe(*(self.channel_prefix + i for i in gone))
        if new:
            await pubsub.subscribe(*(self.channel_prefix + i for i in new))
            await self._mark(new)  # before the streams read: their next polls are published
            self._subscribed |= new
            for channel in new:  # anything saved before the subscription took
                for follower in self._waiting.get(channel, ()):
                    follower.subscribed()

    async def _mark(self, channels: set[str]) -> None:
        """Say that the partitions of the followed watches (`channels` not of a tenant) are
        listened to, for MARK_SECONDS: record.lua publishes their polls only then."""
        markers = {self.keys.of(c).listening for c in channels if not c.startswith("@")}
        if not markers:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for marker in markers:
                pipe.set(marker, "1", px=int(MARK_SECONDS * 1000))
            await pipe.execute()

    def _wake(self, channel: str | bytes, payload: str | bytes) -> None:
        key = channel.decode() if isinstance(channel, bytes) else channel
        data = payload.decode() if isinstance(payload, bytes) else str(payload)
        for follower in self._waiting.get(key, ()):
            follower.notify(data)

    def _wake_all(self) -> None:
        for waiting in self._waiting.values():
            for follower in waiting:
                follower.notify("")

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener


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
    data = render_watch(doc).model_dump_json()
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
            try:
                await asyncio.wait_for(changed.wait(), HEARTBEAT_SECONDS)
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
                await asyncio.wait_for(follower.changed.wait(), HEARTBEAT_SECONDS)
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
                yield f"event: watch\ndata: {render_watch(doc).model_dump_json()}\n\n"
        yield ": the server is shutting down; reconnect\n\n"
