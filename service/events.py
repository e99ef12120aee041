"""Server-Sent Events of one watch: `event: poll` per observed poll, `event: state` per state
change, each with an `id:` and the Watch as JSON `data:`; heartbeat comments; the stream ends
after the terminal state.

Nothing is kept in Redis for this: the scripts that save a watch PUBLISH on that watch's
channel, and one Pub/Sub connection per API process (`EventHub`), subscribed to the watches its
streams follow, wakes them; a woken stream reads the watch once and emits what changed. A
stream also re-reads on every heartbeat, so a missed notification (a lost subscription) delays
an event by one heartbeat at most. Event ids are `<ms>-<kind>` (kind 0 a poll, 1 a state),
ordered like the events: `Last-Event-ID` resumes after one; a resumed stream whose polls it
missed gets the latest poll (the current snapshot), since older ones are not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .domain import WatchDoc, WatchState
from .errors import WatchNotFound
from .models import render_watch
from .store import Store

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
LISTEN_TICK = 0.2  # how soon a new stream's subscription starts, at worst
EventKey = tuple[int, int]
POLL, STATE = 0, 1


class EventHub:
    """One Pub/Sub connection per API process, subscribed to the channels of the watches its
    streams follow (and nothing while none is open), fanned out to those streams."""

    def __init__(self, redis: aioredis.Redis, channel_prefix: str) -> None:
        self.redis = redis
        self.channel_prefix = channel_prefix
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._someone = asyncio.Event()  # set while anyone follows a watch
        self._resync = asyncio.Event()  # the set of followed watches changed
        self._listener: asyncio.Task[None] | None = None
        self.closed = False  # the server is shutting down: streams end

    def close_streams(self) -> None:
        """End every open stream now (shutdown), and any opened later."""
        self.closed = True
        self._wake_all()

    @contextlib.contextmanager
    def follow(self, watch_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `watch_id` is saved, for the life of the block (and once
        when its subscription starts, so nothing saved before that is missed)."""
        changed = asyncio.Event()
        self._waiting.setdefault(watch_id, set()).add(changed)
        self._someone.set()
        self._resync.set()
        if self._listener is None:
            # A context of its own: not the request's (its request id, for one).
            self._listener = asyncio.create_task(self._listen(), context=contextvars.Context())
        try:
            yield changed
        finally:
            waiting = self._waiting[watch_id]
            waiting.discard(changed)
            if not waiting:
                del self._waiting[watch_id]
                self._resync.set()

    async def _listen(self) -> None:
        """Relay notifications while anyone follows; back off and subscribe again after any
        error (streams meanwhile fall back on their heartbeats)."""
        failures = 0
        while True:
            await self._someone.wait()
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    subscribed: set[str] = set()
                    self._resync.set()
                    while self._waiting:
                        if self._resync.is_set():
                            self._resync.clear()
                            subscribed = await self._sync(pubsub, subscribed)
                            failures = 0
                        message = await pubsub.get_message(timeout=LISTEN_TICK)
                        if message is not None:
                            self._wake(message["channel"][len(self.channel_prefix) :])
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning("event subscription failed (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
            if not self._waiting:
                self._someone.clear()

    async def _sync(self, pubsub: PubSub, subscribed: set[str]) -> set[str]:
        """Subscribe to the watches followed now, unsubscribe from the others."""
        wanted = set(self._waiting)
        new, gone = wanted - subscribed, subscribed - wanted
        if new:
            await pubsub.subscribe(*(self.channel_prefix + i for i in new))
            for watch_id in new:  # anything saved before the subscription took
                self._wake(watch_id)
        if gone:
            await pubsub.unsubscribe(*(self.channel_prefix + i for i in gone))
        return wanted

    def _wake(self, watch_id: str | bytes) -> None:
        key = watch_id.decode() if isinstance(watch_id, bytes) else watch_id
        for changed in self._waiting.get(key, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiting in self._waiting.values():
            for changed in waiting:
                changed.set()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener


def parse_event_id(value: str | None) -> EventKey | None:
    """`<ms>-<kind>` as sent in `id:`; None for anything else (then the stream starts afresh)."""
    if not value:
        return None
    ms, _, kind = value.strip().partition("-")
    if not (ms.isdigit() and kind in ("0", "1")) or len(ms) > 16:
        return None
    return int(ms), int(kind)


def current_events(doc: WatchDoc) -> list[tuple[EventKey, str]]:
    """The events a document stands for now, in order: its last poll, then its state."""
    events: list[tuple[EventKey, str]] = []
    if doc["attempts"] and doc["last_polled_at"] is not None:
        events.append(((doc["last_polled_at"], POLL), "poll"))
    state_at = doc["finished_at"] if doc["finished_at"] is not None else doc["created_at"]
    events.append(((state_at, STATE), "state"))
    return sorted(events)


def format_event(key: EventKey, name: str, doc: WatchDoc) -> str:
    data = render_watch(doc).model_dump_json()
    return f"id: {key[0]}-{key[1]}\nevent: {name}\ndata: {data}\n\n"


async def stream(
    store: Store, hub: EventHub, tenant: str, doc: WatchDoc, after: EventKey | None
) -> AsyncIterator[str]:
    """The event stream of one watch, from `doc` (already read for this tenant) on."""
    yield f"retry: {int(HEARTBEAT_SECONDS * 1000)}\n\n"
    with hub.follow(doc["id"]) as changed:
        sent = after
        if sent is None:  # a fresh stream starts with the watch as it is now
            sent = (current_events(doc)[-1][0][0], STATE)
            yield format_event(sent, "state", doc)
        while True:
            for key, name in current_events(doc):
                if key > sent:
                    yield format_event(key, name, doc)
                    sent = key
            if doc["state"] != WatchState.PENDING or hub.closed:
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
