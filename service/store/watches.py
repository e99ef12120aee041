"""The Redis store: every read and atomic write of watches, through the Lua scripts in `lua/`.

Watches are JSON documents (`WatchDoc`, stored compact by `docs`); their scheduling state lives
in a leased schedule (`leases.LeasedQueue`, see `keys.py`), split into partitions: each script
call touches one partition, and reads that span a tenant (its list, its counts) gather every
partition in one pipelined round trip. Times are Redis server milliseconds. A worker's writes
(`save`) carry the fencing token of its claim and change nothing once its lease passed to another.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from ..domain import WatchDoc, WatchState, WebhookState, new_watch_id
from ..errors import (
    IdempotencyConflict,
    IdempotencyKeyExpired,
    PartitionsMismatch,
    TooManyWatches,
    WatchConflict,
    WatchNotFound,
)
from .codec import pack, unpack
from .connection import retry_idempotent
from .durations import DurationBook
from .hosts import HostBook
from .keys import Keys, Partition
from .queue import Claimed, LeasedQueue
from .replication import Replication
from .scripts import ScriptCall, load_scripts, run_scripts, server_time_ms, text

SCRIPTS = ("register", "record", "finish", "cancel", "forget", "callback", "callback_token")
# Push-callback URLs one watch may hand out (its registration, and replays of it).
MAX_CALLBACK_TOKENS = 8
# A finished watch whose webhook is still being delivered outlives its retention: checked again
# this long after (its delivery settles first).
RETENTION_RECHECK_MS = 3_600_000
# With P > 1, a tenant's pending counts in the other partitions are read again after this long,
# or at every registration once it is within a tenth of its limit (`_pending_allowance`).
PENDING_FRESH_SECONDS = 1.0
NEAR_LIMIT = 0.9


@dataclass(frozen=True, slots=True)
class Page:
    docs: list[WatchDoc]
    next_cursor: str | None


class Store:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str = "vtw",
        partitions: int = 1,
        replication: Replication | None = None,
        retention_seconds: float = 7 * 86400,
        idempotency_ttl_seconds: int = 86400,
        max_active_watches: int = 100_000,
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace, partitions)
        self.replication = replication or Replication(redis)
        self.retention_ms = int(retention_seconds * 1000)
        self.idempotency_ttl = idempotency_ttl_seconds
        self.max_active_watches = max_active_watches
        self._scripts = load_scripts(redis, SCRIPTS)
        self.schedule = LeasedQueue(redis, self.keys, "schedule")
        self.hosts = HostBook(redis, self.keys)
        # An upstream's learned durations outlive its last completed job by the retention.
        self.durations = DurationBook(redis, self.keys, retention_seconds)
        self._pending_seen: dict[str, tuple[float, list[int]]] = {}  # tenant -> (when, counts)

    async def ping(self) -> None:
        await self.redis.ping()

    async def check_partitions(self) -> None:
        """Note this deployment's partition count at its first start; refuse another one later
        (`PartitionsMismatch`): watch ids and keys are laid out by it."""
        meta, configured = self.keys.meta, self.keys.partitions
        await retry_idempotent(lambda: self.redis.hsetnx(meta, "partitions", configured))
        stored = int(await retry_idempotent(lambda: self.redis.hget(meta, "partitions")) or 0)
        if stored != configured:
            raise PartitionsMismatch(configured, stored, self.keys.namespace)

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
        k = self.keys
        part = (
            k.of_idempotency(tenant, idempotency_key)
            if idempotency_key is not None
            else random.choice(k.parts)
        )
        watch_id = new_watch_id(await retry_idempotent(self.server_time_ms), part.number)
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
        keys = [
            part.watch(watch_id),
            part.schedule,
            part.index(tenant),
            part.index(tenant, WatchState.PENDING),
            part.counts(tenant),
        ]
        if idempotency_key is not None:
            keys.append(part.idempotency(tenant, idempotency_key))
        args: list[str | bytes | int] = [
            watch_id,
            pack(cast(WatchDoc, doc)),
            int(max_wait_seconds * 1000),
            fingerprint,
            self.idempotency_ttl,
            await self._pending_allowance(tenant, part),
            k.events_prefix,
        ]
        call = self._scripts["register"]
        outcome, payload = await retry_idempotent(
            lambda: self.replication.run(call, keys, args, durable=True)
        )
        if outcome == "conflict":
            raise IdempotencyConflict(payload)
        if outcome == "earlier":
            raw = await self.redis.get(part.watch(payload))
            if raw is None:  # its watch ended and was deleted (retention): never a second one
                raise IdempotencyKeyExpired(payload)
            return unpack(raw), False
        if outcome == "over_limit":
            raise TooManyWatches(int(payload), self.max_active_watches)
        if tenant in self._pending_seen:  # counted here until the next read
            self._pending_seen[tenant][1][part.number] += 1
        return unpack(payload), True

    async def _pending_allowance(self, tenant: str, part: Partition) -> int:
        """How many pending watches the tenant may have in `part`: the limit less those pending
        in its other partitions. Those are read again when last read over a second ago, or
        within a tenth of the limit (this process's registrations since count): far from it, a
        burst of registrations costs no extra round trip each; near it, only registrations
        racing the read (other API processes') may pass the limit, by their number."""
        limit = self.max_active_watches
        if self.keys.partitions == 1:
            return limit
        now = time.monotonic()
        read_at, pending = self._pending_seen.get(tenant, (-math.inf, []))
        if now - read_at > PENDING_FRESH_SECONDS or sum(pending) >= NEAR_LIMIT * limit:
            pending = await self._gather_counts(tenant, field="pending")
            self._pending_seen[tenant] = (now, pending)
        others = sum(n for i, n in enumerate(pending) if i != part.number)
        return max(0, limit - others)

    async def get(self, tenant: str, watch_id: str) -> WatchDoc:
        raw = await self.redis.get(self.keys.watch(watch_id))
        doc: WatchDoc | None = unpack(raw) if raw else None
        if doc is None or doc["tenant"] != tenant:
            raise WatchNotFound(watch_id)
        return doc

    async def get_many(self, tenant: str, watch_ids: Sequence[str]) -> list[WatchDoc]:
        """The tenant's watches among `watch_ids`, in that order (missing ones left out)."""
        if not watch_ids:
            return []
        by_partition = self.keys.group(watch_ids)
        raws: list[str | None] = [None] * len(watch_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for part, indexes in by_partition.items():
                pipe.execute_command("MGET", *(part.watch(watch_ids[i]) for i in indexes))
            replies = await pipe.execute()
        for indexes, reply in zip(by_partition.values(), replies, strict=True):
            for index, raw in zip(indexes, reply, strict=True):
                raws[index] = raw
        docs = [unpack(raw) for raw in raws if raw]
        return [doc for doc in docs if doc["tenant"] == tenant]

    async def page(
        self, tenant: str, state: WatchState | None, limit: int, cursor: str | None
    ) -> Page:
        """The tenant's watches, newest first; `cursor` is the last id of the previous page.
        Each partition's index gives its newest `limit + 1` past the cursor; merged, the newest
        `limit + 1` of all say the page and whether another follows."""
        start = f"({cursor}" if cursor else "+"
        per_partition = cast(
            list[list[str]],
            await self._on_every_partition(
                lambda pipe, part: pipe.zrevrangebylex(
                    part.index(tenant, state), start, "-", start=0, num=limit + 1
                )
            ),
        )
        merged = heapq.merge(*per_partition, reverse=True)
        ids = [watch_id for _, watch_id in zip(range(limit + 1), merged, strict=False)]
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
        doc = unpack(result[1])
        if result[0] == "conflict":
            raise WatchConflict(watch_id, f"has already ended: it is {doc['state']}")
        return doc

    async def add_callback_token(self, watch_id: str, token_hash: str) -> bool:
        """Accept push callbacks for a pending watch with a token whose SHA-256 (hex) is
        `token_hash` (callback_token.lua): False when the watch is gone or ended, or already
        has `MAX_CALLBACK_TOKENS` (then no callback URL is handed out)."""
        part = self.keys.of(watch_id)
        keys = [part.watch(watch_id), part.callback(watch_id)]
        args: list[str | int] = [token_hash, MAX_CALLBACK_TOKENS]
        script = self._scripts["callback_token"]
        return bool(await retry_idempotent(lambda: script(keys=keys, args=args)))

    async def callback(self, watch_id: str, token_hash: str, min_interval_seconds: float) -> str:
        """A push callback (callback.lua): make the watch due now, at most once per interval,
        without a second poll while one is in flight. Returns `accepted` (an early poll was
        granted), `ignored` (a valid callback that changed nothing) or `missing` (no such watch,
        not its token, or ended: one answer for all three)."""
        part = self.keys.of(watch_id)
        keys = [
            part.schedule,
            part.leases,
            part.watch(watch_id),
            part.callback(watch_id),
            part.callbacks,
        ]
        args: list[str | int] = [watch_id, token_hash, int(min_interval_seconds * 1000)]
        script = self._scripts["callback"]
        # Safe to repeat: a second run inside the interval changes nothing.
        return text(await retry_idempotent(lambda: script(keys=keys, args=args)))

    async def due_backlog(self) -> tuple[int, float]:
        """How many watches are due and unclaimed, and how long the oldest has waited (s)."""
        now = await self.server_time_ms()

        def due_and_head(pipe: Any, part: Partition) -> None:
            pipe.zcount(part.schedule, "-inf", now)
            pipe.zrange(part.schedule, 0, 0, withscores=True)

        replies = await self._on_every_partition(due_and_head)
        count, oldest = 0, 0.0
        for due, head in zip(replies[::2], replies[1::2], strict=True):
            count += int(due)
            if head and head[0][1] <= now:
                oldest = max(oldest, (now - head[0][1]) / 1000)
        return count, oldest

    async def counts(self, tenant: str) -> dict[str, int]:
        """The tenant's counts (state -> n, wh:<state> -> n), summed over the partitions."""
        replies = cast(
            list[dict[str, str]],
            await self._on_every_partition(lambda pipe, part: pipe.hgetall(part.counts(tenant))),
        )
        total: dict[str, int] = {}
        for reply in replies:
            for field, value in reply.items():
                total[field] = total.get(field, 0) + int(value)
        return total

    async def _gather_counts(self, tenant: str, field: str) -> list[int]:
        """One count of the tenant in each partition, in partition order."""
        replies = await self._on_every_partition(
            lambda pipe, part: pipe.hget(part.counts(tenant), field)
        )
        return [int(value or 0) for value in replies]

    async def _on_every_partition(self, queue: Callable[[Any, Partition], object]) -> list[Any]:
        """Every reply of the commands `queue` adds to one pipeline for each partition, in
        partition order: one round trip for all (what a read spanning a tenant costs)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in self.keys.parts:
                queue(pipe, part)
            return await pipe.execute()

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
        by_partition = {
            part: [pending[j] for j in js]
            for part, js in self.keys.group(polls[i][0].id for i in pending).items()
        }
        for part, indexes in by_partition.items():
            keys = [part.schedule, part.leases, part.listening, part.callbacks]
            args: list[Any] = [self.keys.events_prefix]
            for claimed, doc in (polls[i] for i in indexes):
                keys.append(part.watch(claimed.id))
                # One argument per poll: Redis arguments cost the client more than their bytes.
                head = f"{claimed.id} {claimed.token} {doc['next_poll_at']} ".encode()
                args.append(head + pack(doc))
            calls.append((self._scripts["record"], keys, args))
        own = len(calls)
        results = await run_scripts(self.redis, [*calls, *also], raise_from=own)
        saved = [False] * len(polls)
        for i, done in zip(ended, results, strict=False):
            saved[i] = bool(done)
        recorded = results[len(ended) : own]
        for indexes, flags in zip(by_partition.values(), recorded, strict=True):
            for i, done in zip(indexes, flags, strict=True):
                saved[i] = bool(done)
        return saved, results[own:]

    def _end_keys(self, watch_id: str, tenant: str, state: str) -> list[str]:
        """The keys of `end_watch` in the Lua prelude (finish.lua, cancel.lua)."""
        part = self.keys.of(watch_id)
        return [
            part.schedule,
            part.leases,
            part.watch(watch_id),
            part.index(tenant, WatchState.PENDING),
            part.index(tenant, state),
            part.counts(tenant),
            part.expiry,
            part.outbox,
        ]

    def _finish(self, claimed: Claimed, doc: WatchDoc) -> ScriptCall:
        has_webhook = doc["webhook"]["state"] == WebhookState.PENDING
        args = [
            claimed.id,
            claimed.token,
            pack(doc),
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
        """Delete terminal watches past their retention whose webhooks have settled, up to
        `limit` per partition; returns how many."""
        now = await self.server_time_ms()
        expired = cast(
            list[list[str]],
            await self._on_every_partition(
                lambda pipe, part: pipe.zrangebyscore(part.expiry, "-inf", now, start=0, num=limit)
            ),
        )
        forgotten = 0
        for part, ids in zip(self.keys.parts, expired, strict=True):
            if not ids:
                continue
            raws = await self.redis.mget([part.watch(i) for i in ids])
            for watch_id, raw in zip(ids, raws, strict=True):
                tenant, state = (doc["tenant"], doc["state"]) if (doc := _doc(raw)) else ("", "")
                forgotten += await self._scripts["forget"](
                    keys=[
                        part.expiry,
                        part.watch(watch_id),
                        part.deliveries(watch_id),
                        part.index(tenant),
                        part.index(tenant, state),
                        part.counts(tenant),
                    ],
                    args=[watch_id, state, RETENTION_RECHECK_MS],
                )
        return forgotten

    async def server_time_ms(self) -> int:
        return await server_time_ms(self.redis)


def _doc(raw: str | bytes | None) -> WatchDoc | None:
    return unpack(raw) if raw else None
