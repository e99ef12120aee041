"""Notifications of saved watches over Redis Pub/Sub, for the API's event streams.

Nothing is kept in Redis for them: the scripts that save a watch PUBLISH on that watch's
channel (a tenant's too), and one Pub/Sub connection per API process (`EventHub`), subscribed
to the channels its streams follow, wakes them (`Follower`). record.lua publishes a poll only
while its partition is marked as listened to (`_mark`). The SSE framing is `service/api/sse.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from .connection import subscriber
from .keys import Keys

logger = logging.getLogger(__name__)
LISTEN_TICK = 0.2  # how soon a new stream's subscription starts, at worst
MARK_SECONDS = 30.0  # a partition is `listening` this long after its last mark...
MARK_REFRESH_SECONDS = 10.0  # ...renewed this often while one of its watches is followed
MAX_QUEUED_IDS = 1000  # a tenant stream further behind is told to resync (`event: resync`)
# What an open stream holds is most of an API process's memory with thousands open
# (bench/api.py --sse): a follower's ids are the one shared empty list until one comes.
_NO_IDS: list[str] = []


class Follower:
    """What one stream waits on: `changed` is set at each notification, and the watch ids
    the notifications carried (a tenant's channel carries them; a watch's carries none) queue
    in `ids`. `overflowed` says some may be missing: more than `MAX_QUEUED_IDS` queued, or the
    subscription was lost and made again (messages in between are gone)."""

    __slots__ = ("changed", "ids", "live", "overflowed")

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.ids: list[str] = _NO_IDS  # a list of its own once an id comes (a watch's: never)
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
            if self.ids is _NO_IDS:
                self.ids = []
            if len(self.ids) < MAX_QUEUED_IDS:
                self.ids.append(payload)
            else:
                self.overflowed = True
        self.changed.set()

    def take_ids(self) -> list[str]:
        """The ids queued since the last call, each once, oldest first."""
        ids = list(dict.fromkeys(self.ids))
        self.ids = _NO_IDS
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
