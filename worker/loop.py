"""The claim loop shared by the poller and the webhook dispatcher.

Claim up to the free slots from a leased schedule, from the partition its `PartitionPicker`
says is due (`partitions.py`), run each claimed item in its own task (its lease kept alive by
the loop's `LeaseKeeper` until its result is written), nap until the next item is due (at most
`idle_sleep`, which bounds lateness), ride out any store error with backoff, and on stop drain
in-flight work within a grace period, then give back what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from redis.exceptions import RedisError

from service.logs import watch_fields
from service.metrics import LEASES_ENDED, LEASES_LOST
from service.store.queue import Claimed, LeasedQueue

from .leases import LeaseKeeper
from .partitions import Assignment, PartitionPicker
from .retry import FailureStreak, outage_backoff

logger = logging.getLogger(__name__)
IDLE_SLEEP = 0.05
DEFER_SECONDS = 1.0  # how long an item of a host over its share waits (±50 %)
# A host whose items hold a slot this long or less on average may go past its share (HostLimits).
TURNOVER_SECONDS = 0.5
STALE_TURNOVER = 4 * TURNOVER_SECONDS  # an estimate older than this is not used
T = TypeVar("T")
R = TypeVar("R")


class WriteBatch(Generic[T, R]):
    """Coalesces writes into one call of `send` (one round trip): those made in one event-loop
    turn, and those made while the previous call was in flight, which go together as soon as
    it ends (group commit: under load, batches grow rather than round trips multiply; at most
    one call in flight, so a batch is bounded by the writers waiting on it).

    `await batch.add(item)` returns that item's result; a failed send fails every item in it.
    `send` must not add to its own batch (it would wait for itself).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._send = send
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._sending: asyncio.Task[list[R]] | None = None

    async def add(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if not self._items and self._sending is None:
            loop.call_soon(self._flush)
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        return await future

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = self._sending = asyncio.ensure_future(self._send(items))
        task.add_done_callback(lambda done: self._settle(done, futures))

    def _settle(self, done: asyncio.Future[list[R]], futures: list[asyncio.Future[R]]) -> None:
        self._sending = None
        try:
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            results = done.result() if error is None else []
            for index, future in enumerate(futures):
                if future.done():
                    continue
                if error is None and index < len(results):
                    future.set_result(results[index])
                else:
                    future.set_exception(error or RuntimeError("no result for this write"))
        finally:
            if done.cancelled():  # shutting down: nothing more is sent
                for future in self._futures:
                    future.cancel()
                self._items, self._futures = [], []
            elif self._items:  # written meanwhile: their turn now
                self._flush()


class LeaseLost(Exception):
    """The fence refused the item's write (or its lease was found gone): another worker holds
    it now, or its watch ended meanwhile (a cancel); this worker's result must be dropped."""


class Abandoned(Exception):
    """The loop is stopping: the item was not started; its lease is given back."""


class Deferred(Exception):
    """The item goes back to the schedule for `seconds` (default: about `DEFER_SECONDS`),
    not done and not counted: its host already holds its share of this loop's slots (so one
    slow host cannot starve every other), or is over its fleet-wide budget."""

    def __init__(self, seconds: float | None = None, reason: str = "host_share") -> None:
        super().__init__(seconds, reason)
        self.seconds = seconds
        self.reason = reason


class HostLimits:
    """Per host of one loop: its users (items inside `host_slot`, running or waiting for a
    slot), counted always (the share rule binds whatever the limit), and, when `limit` can bind
    (it is below the loop's concurrency; None: it cannot), a semaphore of `limit` slots. A host
    is forgotten with its last user.

    The share rule is work-conserving for a host that turns its slots over quickly: one whose
    items, by Little's law (users ÷ finishes per second over the last `TURNOVER_SECONDS` or
    more), hold a slot for at most `TURNOVER_SECONDS` may take more than its share, since any
    other host's item waits no longer than that for a slot; a slow or hanging host (few or no
    finishes) stays at its share. Deferring the items of a fast host instead only puts them
    back and claims them again, a Redis round trip each."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()
        # Hosts that reached their share: [time of the last estimate, finishes counted then,
        # fast?, finishes]; kept across moments without users (a burst of polls that all
        # answer at once), forgotten once stale.
        self._turnover: dict[str, list[Any]] = {}

    def users(self, host: str) -> int:
        """Items of `host` running or waiting for a slot."""
        return self._users[host]

    def join(self, host: str) -> None:
        self._users[host] += 1

    def leave(self, host: str) -> None:
        users = self._users
        users[host] -= 1
        if not users[host]:
            del users[host]
            self._semaphores.pop(host, None)
        turnover = self._turnover.get(host)
        if turnover is not None:
            turnover[3] += 1

    def turns_over(self, host: str) -> bool:
        """Whether `host`'s items hold their slots briefly (at most `TURNOVER_SECONDS` each on
        average, measured over at least that long); a host just seen at its share is not."""
        now = time.monotonic()
        turnover = self._turnover.get(host)
        if turnover is not None:
            elapsed = now - turnover[0]
            if elapsed < TURNOVER_SECONDS:
                return bool(turnover[2])
            if elapsed <= STALE_TURNOVER:
                fast: bool = (turnover[3] - turnover[1]) * TURNOVER_SECONDS >= self._users[
                    host
                ] * elapsed
                turnover[:3] = now, turnover[3], fast
                return fast
            turnover[:3] = now, turnover[3], False  # stale: measure anew
            return False
        if len(self._turnover) >= 64:  # forget the stale hosts without users
            for name, (since, *_) in list(self._turnover.items()):
                if now - since > STALE_TURNOVER and not self._users[name]:
                    del self._turnover[name]
        self._turnover[host] = [now, 0, False, 0]
        return False

    async def acquire(self, host: str) -> None:
        """Wait for a slot of `host` (a user who joined); give it back by `release`."""
        semaphore = self._semaphores.get(host)
        if semaphore is None:
            semaphore = self._semaphores[host] = asyncio.Semaphore(cast(int, self.limit))
        await semaphore.acquire()

    def release(self, host: str) -> None:
        self._semaphores[host].release()


class HostSlot:
    """`async with loop.host_slot(host)`: the block runs within the host's limit, unless the
    loop began stopping meanwhile (`Abandoned`) or the host already holds its share of the
    loop's slots and does not turn them over quickly (`Deferred`: so one slow host never takes
    every slot, whatever the per-host limit). A context manager, not a wrapping coroutine: the
    block's awaits do not pass through one more frame each time they resume (the poll's hot
    path)."""

    __slots__ = ("host", "limits", "loop")

    def __init__(self, loop: ClaimLoop, host: str) -> None:
        self.loop, self.host, self.limits = loop, host, loop.host_limits

    async def __aenter__(self) -> None:
        limits, host = self.limits, self.host
        if limits.users(host) >= self.loop.host_share and not limits.turns_over(host):
            raise Deferred
        limits.join(host)
        if limits.limit is None:  # no queue to wait in: nothing to abandon either
            return
        try:
            await limits.acquire(host)
        except BaseException:
            limits.leave(host)
            raise
        if self.loop.stopping.is_set():
            limits.release(host)
            limits.leave(host)
            raise Abandoned

    async def __aexit__(self, *exc_info: object) -> None:
        limits = self.limits
        if limits.limit is not None:
            limits.release(self.host)
        limits.leave(self.host)


class ClaimLoop(ABC):
    name = "loop"
    idle_sleep = IDLE_SLEEP

    def __init__(
        self,
        queue: LeasedQueue,
        concurrency: int,
        lease_seconds: float,
        host_limit: int | None = None,
        assignment: Assignment | None = None,
    ) -> None:
        self.queue = queue
        self.picker = PartitionPicker(
            assignment or Assignment(None, queue.partitions), queue, self.idle_sleep * 1000
        )
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.keeper = LeaseKeeper(queue, lease_seconds, self.name)
        # A per-host limit at or above the process's concurrency could never bind: no semaphores
        # then; the users of each host are counted whatever the limit (`host_share`).
        binding = host_limit is not None and host_limit < concurrency
        self.host_limits = HostLimits(host_limit if binding else None)
        # The most items one host may hold, running or queued: half the slots.
        self.host_share = max(1, concurrency // 2)
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        # While busy, claim in batches of at least this many: one claim serves many polls.
        self.claim_batch = max(1, concurrency // 16)
        self._clock_offset_ms = 0.0  # Redis time minus this process's monotonic time
        self._token_prefix = secrets.token_hex(6)
        self._claims = 0
        self.heartbeat = 0.0  # monotonic time the loop last showed progress (see `stuck_for`)
        self._claim_failures = FailureStreak(f"{self.name}: claiming", logger)
        self._item_failures = FailureStreak(f"{self.name}: handling claimed items", logger)

    @abstractmethod
    async def handle(self, claimed: Claimed) -> None: ...

    def server_now_ms(self) -> int:
        """Redis time, estimated from the last claim plus this process's monotonic clock."""
        return int(time.monotonic() * 1000 + self._clock_offset_ms)

    def sync_clock(self, redis_now_ms: int) -> None:
        """Take Redis time as read by a claim (what `server_now_ms` estimates from)."""
        self._clock_offset_ms = redis_now_ms - time.monotonic() * 1000

    def stop(self) -> None:
        """Stop claiming (idempotent); wakes the loop wherever it waits."""
        self.stopping.set()
        self._slot_free.set()

    async def run(self, grace_seconds: float) -> None:
        """Claim and handle until stopped, then drain; the lease keeper runs throughout."""
        keeper_stop = asyncio.Event()
        keeper = asyncio.create_task(self.keeper.run(keeper_stop))
        try:
            await self._claim_until_stopped()
            await self.drain(grace_seconds)
        finally:
            keeper_stop.set()
            await keeper
            await self.keeper.release_all()

    async def _claim_until_stopped(self) -> None:
        token, lost_token, lost_partition = self._next_token(), None, None
        loop = asyncio.get_running_loop()
        clock, create_task, picker = loop.time, loop.create_task, self.picker
        while not self.stopping.is_set():
            self.heartbeat = clock()
            free = self.concurrency - len(self.in_flight)
            if free < self.claim_batch and self.in_flight:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            # A claim whose reply was lost is followed by one on its partition, with its token.
            partition = lost_partition
            if partition is None:
                partition = picker.pick(self.server_now_ms())
            if partition is None:
                await self._idle()
                continue
            sent_at = clock()
            try:
                claim = await self.queue.claim(
                    free, self.lease_seconds, token, lost_token, partition
                )
            except Exception as exc:
                # The claim may have run with its reply lost: the next one, with the same token,
                # first hands back whatever this token leased.
                lost_token, lost_partition = token, partition
                await self._nap(self._claim_failures.failed(exc))
                continue
            self._claim_failures.succeeded()
            token, lost_token, lost_partition = self._next_token(), None, None
            self.sync_clock(claim.now_ms)
            for claimed in claim.watches:
                self.keeper.hold(claimed, since=sent_at)
                task = create_task(self._handle(claimed))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
            picker.claimed(partition, claim.now_ms, claim.next_due_ms, len(claim.watches) >= free)

    async def _idle(self) -> None:
        """No partition worth a claim now: help an overdue one, or nap until one is due."""
        try:
            await self.picker.help(self.server_now_ms(), asyncio.get_running_loop().time() * 1000)
        except Exception as exc:  # helping is optional; claiming reports Redis trouble
            logger.debug("%s: reading other partitions failed: %s", self.name, exc)
        if self.picker.pick(self.server_now_ms()) is None:
            await self._nap(max(0.001, self.picker.wait_ms(self.server_now_ms()) / 1000))

    def _next_token(self) -> str:
        self._claims += 1
        return f"{self._token_prefix}:{self._claims:x}"

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        # Wake the claim loop only when it would claim (not once per finished item).
        if not self.in_flight or self.concurrency - len(self.in_flight) >= self.claim_batch:
            self._slot_free.set()
        self.heartbeat = asyncio.get_running_loop().time()

    def stuck_for(self) -> float:
        """Seconds since the loop last claimed or finished anything (0 before it starts)."""
        if not self.heartbeat:
            return 0.0
        return asyncio.get_running_loop().time() - self.heartbeat

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def host_slot(self, host: str) -> HostSlot:
        return HostSlot(self, host)

    async def write_while_held(
        self, claimed: Claimed, write: Callable[[], Awaitable[T]], failures: int = 0
    ) -> T:
        """Run a fenced write (safe to repeat), again after a store error for as long as the
        lease is ours: a passing READONLY or OOM must not throw away a finished poll or a
        delivered webhook (whose lease would lapse, and the work be done again). `failures`:
        how many times the caller's own first try already failed (the backoff goes on)."""
        while True:
            try:
                return await write()
            except (RedisError, OSError):
                failures += 1
                delay = outage_backoff(failures)
                if not self.keeper.holds(claimed, margin=delay):
                    raise
                await asyncio.sleep(delay)

    async def _handle(self, claimed: Claimed) -> None:
        try:
            await self.handle(claimed)
        except Abandoned:
            return  # still held: given back when the loop ends
        except Deferred as deferred:
            self.keeper.drop(claimed)
            await self._defer(claimed, deferred.seconds)
            return
        except asyncio.CancelledError:
            # Cut off past the grace period, maybe after its request went out: let the lease
            # lapse rather than hand the item straight to another worker.
            self.keeper.drop(claimed)
            raise
        except LeaseLost:
            await self._refused(claimed)
        except Exception as exc:  # the lease lapses and the item is tried again
            self._item_failures.failed(exc)
        else:
            self._item_failures.succeeded()
        self.keeper.drop(claimed)

    async def _refused(self, claimed: Claimed) -> None:
        """Count and log a refused write: a watch that ended while held (an ordinary cancel) is
        no lease lost, which would say that workers stall past their leases."""
        try:
            ended = await self.queue.ended(claimed)
        except Exception as exc:  # cannot tell: counted as lost
            logger.debug("%s: why %s was refused is unknown: %s", self.name, claimed.id, exc)
            ended = False
        if ended:
            LEASES_ENDED.inc()
            logger.debug(
                "%s: %s ended while held; its result is dropped",
                self.name,
                claimed.id,
                extra=watch_fields(claimed.doc),
            )
            return
        LEASES_LOST.inc()
        logger.info(
            "%s: lease on %s was lost; its new holder decides",
            self.name,
            claimed.id,
            extra=watch_fields(claimed.doc),
        )

    async def _defer(self, claimed: Claimed, seconds: float | None) -> None:
        delay = random.uniform(0.5, 1.5) * DEFER_SECONDS if seconds is None else max(0.0, seconds)
        try:
            await self.queue.release([claimed], delay)
        except Exception as exc:  # its lease lapses instead
            self._item_failures.failed(exc)

    async def drain(self, grace_seconds: float) -> None:
        """Wait for work in flight up to the grace period, then cancel the rest."""
        if not self.in_flight:
            return
        _, pending = await asyncio.wait(set(self.in_flight), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            logger.info("%s: cancelled %d tasks after the grace period", self.name, len(pending))
            await asyncio.wait(pending)
