"""The Redis store: every read and atomic write of watches, through the Lua scripts in `lua/`.

Watches are JSON documents (`WatchDoc`); their scheduling state lives in a leased schedule
(`leases.LeasedQueue`, see `keys.py`). Times are Redis server milliseconds. A worker's writes
(`save`) carry the fencing token of its claim and change nothing once its lease passed to another.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from .connection import retry_idempotent
from .domain import WatchDoc, WatchState, WebhookState, new_watch_id
from .durations import DurationBook
from .errors import (
    IdempotencyConflict,
    IdempotencyKeyExpired,
    TooManyWatches,
    WatchConflict,
    WatchNotFound,
)
from .hosts import HostBook
from .keys import Keys
from .leases import (
    Claimed,
    LeasedQueue,
    ScriptCall,
    decode,
    load_scripts,
    run_scripts,
    server_time_ms,
)

SCRIPTS = ("register", "record", "finish", "cancel", "forget")
# A finished watch whose webhook is still being delivered outlives its retention: checked again
# this long after (its delivery settles first).
RETENTION_RECHECK_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Page:
    docs: list[WatchDoc]
    next_cursor: str | None


def encode(value: Any) -> str:
    """Compact JSON of a document we built (orjson: the poll loop's hottest path)."""
    return orjson.dumps(value).decode()


class Store:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str = "vtw",
        retention_seconds: float = 7 * 86400,
        idempotency_ttl_seconds: int = 86400,
        max_active_watches: int = 100_000,
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.retention_ms = int(retention_seconds * 1000)
        self.idempotency_ttl = idempotency_ttl_seconds
        self.max_active_watches = max_active_watches
        self._scripts = load_scripts(redis, SCRIPTS)
        self.schedule = LeasedQueue(
            redis, self.keys.schedule, self.keys.leases, self.keys.watch_prefix
        )
        self.hosts = HostBook(redis, self.keys)
        # An upstream's learned durations outlive its last completed job by the retention.
        self.durations = DurationBook(redis, self.keys, retention_seconds)

    async def ping(self) -> None:
        await self.redis.ping()

    # -- the API's side ---------------------------------------------------------------------

    async def register(
        self,
        tenant: str,
        spec: dict[str, Any],
        max_wait_seconds: float,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> tuple[WatchDoc, bool]:
        """Create a watch; returns (doc, created). A repeated idempotent request returns the
        earlier watch with created=False; a reused key with another body raises."""
        watch_id = new_watch_id(await retry_idempotent(self.server_time_ms))
        doc = {
            "id": watch_id,
            "tenant": tenant,
            # The caller's part, kept verbatim (stdlib json: any integer size in metadata).
            "spec": json.dumps(spec, separators=(",", ":")),
            "state": WatchState.PENDING.value,
            "reason": None,
            "attempts": 0,
            "last_result": None,
            "last_error": None,
            "progress": None,
            "last_polled_at": None,
            "finished_at": None,
            # A webhook becomes "pending" when the watch ends (see `save`).
            "webhook": {"state": WebhookState.NONE.value, "attempts": 0, "last_status_code": None},
        }
        k = self.keys
        keys = [
            k.watch(watch_id),
            k.schedule,
            k.index(tenant),
            k.index(tenant, WatchState.PENDING),
            k.counts(tenant),
        ]
        if idempotency_key is not None:
            keys.append(k.idempotency(tenant, idempotency_key))
        args: list[str | int] = [
            watch_id,
            encode(doc),
            int(max_wait_seconds * 1000),
            fingerprint,
            self.idempotency_ttl,
            k.watch_prefix,
            self.max_active_watches,
            k.events_prefix,
        ]
        outcome, payload = await retry_idempotent(
            lambda: self._scripts["register"](keys=keys, args=args)
        )
        if outcome == "conflict":
            raise IdempotencyConflict(payload)
        if outcome == "gone":
            raise IdempotencyKeyExpired(payload)
        if outcome == "over_limit":
            raise TooManyWatches(int(payload), self.max_active_watches)
        return cast(WatchDoc, decode(payload)), outcome == "created"

    async def get(self, tenant: str, watch_id: str) -> WatchDoc:
        raw = await self.redis.get(self.keys.watch(watch_id))
        doc: WatchDoc | None = decode(raw) if raw else None
        if doc is None or doc["tenant"] != tenant:
            raise WatchNotFound(watch_id)
        return doc

    async def get_many(self, tenant: str, watch_ids: Sequence[str]) -> list[WatchDoc]:
        """The tenant's watches among `watch_ids`, in that order (missing ones left out)."""
        raws = await self.redis.mget([self.keys.watch(i) for i in watch_ids]) if watch_ids else []
        docs: list[WatchDoc] = [decode(raw) for raw in raws if raw]
        return [doc for doc in docs if doc["tenant"] == tenant]

    async def page(
        self, tenant: str, state: WatchState | None, limit: int, cursor: str | None
    ) -> Page:
        """The tenant's watches, newest first; `cursor` is the last id of the previous page."""
        start = f"({cursor}" if cursor else "+"
        ids = cast(
            list[str],
            await self.redis.zrevrangebylex(
                self.keys.index(tenant, state), start, "-", start=0, num=limit + 1
            ),
        )
        page_ids = ids[:limit]
        docs = await self.get_many(tenant, page_ids)
        return Page(docs, page_ids[-1] if len(ids) > limit else None)

    async def cancel(self, tenant: str, watch_id: str) -> WatchDoc:
        """End a pending watch as cancelled (safe to repeat: one request id for every try)."""
        keys = self._end_keys(watch_id, tenant, WatchState.CANCELLED)
        args: list[str | int] = [
            watch_id,
            tenant,
            self.retention_ms,
            secrets.token_hex(8),
            self.keys.events_prefix,
        ]
        result = await retry_idempotent(lambda: self._scripts["cancel"](keys=keys, args=args))
        if result[0] == "missing":
            raise WatchNotFound(watch_id)
        doc: WatchDoc = decode(result[1])
        if result[0] == "conflict":
            raise WatchConflict(watch_id, f"has already ended: it is {doc['state']}")
        return doc

    async def due_backlog(self) -> tuple[int, float]:
        """How many watches are due and unclaimed, and how long the oldest has waited (s)."""
        now = await self.server_time_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.keys.schedule, "-inf", now)
            pipe.zrange(self.keys.schedule, 0, 0, withscores=True)
            count, head = await pipe.execute()
        oldest = (now - head[0][1]) / 1000 if head and head[0][1] <= now else 0.0
        return int(count), oldest

    async def counts(self, tenant: str) -> dict[str, int]:
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.counts(tenant)))
        return {field: int(value) for field, value in raw.items()}

    # -- the worker's side ------------------------------------------------------------------

    async def save(self, polls: Sequence[tuple[Claimed, WatchDoc]]) -> list[bool]:
        """Save many polls in one round trip: pending docs in one `record` call (the due time is
        their `next_poll_at`), terminal ones with a `finish` each (state and webhook outbox
        entry in one atomic step).

        Each is fenced on its own: False for a watch whose lease passed to another worker.
        """
        saved, _ = await self.save_with(polls)
        return saved

    async def save_with(
        self, polls: Sequence[tuple[Claimed, WatchDoc]], also: Sequence[ScriptCall] = ()
    ) -> tuple[list[bool], list[Any]]:
        """`save`, with other script calls in the same pipeline (the worker's host reports):
        returns what `save` does and their results, an exception for a call that failed (only
        the saves' errors are raised)."""
        pending = [i for i, (_, doc) in enumerate(polls) if doc["state"] == WatchState.PENDING]
        ended = [i for i, (_, doc) in enumerate(polls) if doc["state"] != WatchState.PENDING]
        calls = [self._finish(*polls[i]) for i in ended]
        if pending:
            args: list[Any] = [self.keys.watch_prefix, self.keys.events_prefix]
            for claimed, doc in (polls[i] for i in pending):
                args += [claimed.id, claimed.token, doc["next_poll_at"], encode(doc)]
            calls.append((self._scripts["record"], [self.keys.schedule, self.keys.leases], args))
        own = len(calls)
        results = await run_scripts(self.redis, [*calls, *also], raise_from=own)
        saved = [False] * len(polls)
        for i, done in zip(ended, results, strict=False):
            saved[i] = bool(done)
        for i, done in zip(pending, results[own - 1] if pending else [], strict=True):
            saved[i] = bool(done)
        return saved, results[own:]

    def _end_keys(self, watch_id: str, tenant: str, state: str) -> list[str]:
        """The keys of `end_watch` in the Lua prelude (finish.lua, cancel.lua)."""
        k = self.keys
        return [
            k.schedule,
            k.leases,
            k.watch(watch_id),
            k.index(tenant, WatchState.PENDING),
            k.index(tenant, state),
            k.counts(tenant),
            k.expiry,
            k.outbox,
        ]

    def _finish(self, claimed: Claimed, doc: WatchDoc) -> ScriptCall:
        has_webhook = doc["webhook"]["state"] == WebhookState.PENDING
        args = [
            claimed.id,
            claimed.token,
            encode(doc),
            doc["state"],
            self.retention_ms,
            "1" if has_webhook else "0",
            self.keys.events_prefix,
            doc["tenant"],
        ]
        return (
            self._scripts["finish"],
            self._end_keys(claimed.id, doc["tenant"], doc["state"]),
            args,
        )

    async def forget_expired(self, limit: int = 500) -> int:
        """Delete terminal watches past their retention whose webhooks have settled; returns
        how many."""
        k = self.keys
        now = await self.server_time_ms()
        ids = cast(
            list[str], await self.redis.zrangebyscore(k.expiry, "-inf", now, start=0, num=limit)
        )
        raws = await self.redis.mget([k.watch(i) for i in ids]) if ids else []
        forgotten = 0
        for watch_id, raw in zip(ids, raws, strict=True):
            doc = decode(raw) if raw else {"tenant": "", "state": ""}
            forgotten += await self._scripts["forget"](
                keys=[
                    k.expiry,
                    k.watch(watch_id),
                    k.deliveries(watch_id),
                    k.index(doc["tenant"]),
                    k.index(doc["tenant"], doc["state"]),
                    k.counts(doc["tenant"]),
                ],
                args=[watch_id, doc["state"], RETENTION_RECHECK_MS],
            )
        return forgotten

    async def server_time_ms(self) -> int:
        return await server_time_ms(self.redis)
