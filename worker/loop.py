"""The claim loop shared by the poller and the webhook dispatcher.

Claim up to the free slots from a Redis schedule, run each claimed item in its own task, nap
until the next item is due (at most IDLE_SLEEP, which bounds lateness), ride out Redis outages
with backoff, and on stop drain in-flight work within a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service.store import Claim, Claimed

from .retry import STORE_ERRORS, outage_backoff

logger = logging.getLogger(__name__)
IDLE_SLEEP = 0.05
T = TypeVar("T")
R = TypeVar("R")


class WriteBatch(Generic[T, R]):
    """Coalesces the writes made in one event-loop turn into one call of `send` (one round trip).

    `await batch.add(item)` returns that item's result; a failed send fails every item in it.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._send = send
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []

    async def add(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if not self._items:
            loop.call_soon(self._flush)
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        return await future

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = asyncio.ensure_future(self._send(items))
        task.add_done_callback(lambda done: self._settle(done, futures))

    @staticmethod
    def _settle(done: asyncio.Future[list[R]], futures: list[asyncio.Future[R]]) -> None:
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        for index, future in enumerate(futures):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[index])


class LeaseLost(Exception):
    """Another worker holds the item now; this worker's result must be dropped."""


class HostLimits:
    """At most `limit` concurrent requests per host; a host's semaphore is dropped when unused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()

    async def run(self, host: str, work: Callable[[], Awaitable[T]]) -> T:
        semaphore = self._semaphores.setdefault(host, asyncio.Semaphore(self.limit))
        self._users[host] += 1
        try:
            async with semaphore:
                return await work()
        finally:
            self._users[host] -= 1
            if not self._users[host]:
                del self._users[host], self._semaphores[host]


class ClaimLoop(ABC):
    name = "loop"
    idle_sleep = IDLE_SLEEP

    def __init__(self, concurrency: int, lease_seconds: float) -> None:
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        # While busy, claim in batches of at least this many: one claim serves many polls.
        self.claim_batch = max(1, concurrency // 16)
        self._clock_offset_ms = 0.0  # Redis time minus this process's monotonic time

    @abstractmethod
    async def claim(self, limit: int) -> Claim: ...

    @abstractmethod
    async def handle(self, claimed: Claimed) -> None: ...

    def server_now_ms(self) -> int:
        """Redis time, estimated from the last claim plus this process's monotonic clock."""
        return int(asyncio.get_running_loop().time() * 1000 + self._clock_offset_ms)

    async def run(self) -> None:
        """Claim and handle until `stopping` is set."""
        failures = 0
        while not self.stopping.is_set():
            free = self.concurrency - len(self.in_flight)
            if free < self.claim_batch and self.in_flight:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                claim = await self.claim(free)
            except STORE_ERRORS as exc:
                failures += 1
                delay = outage_backoff(failures)
                logger.warning("%s: claim failed (%s); retrying in %.1fs", self.name, exc, delay)
                await self._nap(delay)
                continue
            if failures:
                logger.info("%s: store reachable again after %d failures", self.name, failures)
                failures = 0
            self._clock_offset_ms = claim.now_ms - asyncio.get_running_loop().time() * 1000
            for claimed in claim.watches:
                task = asyncio.create_task(self._handle(claimed))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
            if len(claim.watches) < free:
                wait_ms = self.idle_sleep * 1000
                if claim.next_due_ms is not None:
                    wait_ms = min(wait_ms, claim.next_due_ms - claim.now_ms)
                if wait_ms > 0:
                    await self._nap(wait_ms / 1000)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self._slot_free.set()

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _handle(self, claimed: Claimed) -> None:
        try:
            await self.handle(claimed)
        except LeaseLost:
            logger.info("%s: lease on %s was lost; its new holder decides", self.name, claimed.id)
        except STORE_ERRORS as exc:
            logger.warning(
                "%s: could not save %s (%s); the lease will lapse", self.name, claimed.id, exc
            )
        except Exception:
            logger.exception("%s: handling %s failed", self.name, claimed.id)

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
