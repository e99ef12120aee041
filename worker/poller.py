"""The poller: claims due watches from the store and polls their upstreams.

Concurrency is bounded per process (`worker_concurrency`) and per upstream host
(`per_host_concurrency`). Each poll uses `client/`'s upstream protocol and backoff rule, then
records the result (or the terminal state) under the lease it was claimed with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from client.backoff import BackoffPolicy, next_poll_delay
from client.upstream import Observation, Status, fetch_status
from service.domain import WatchState, WebhookState
from service.settings import Settings
from service.store import Claimed, Doc, Store

from .retry import STORE_ERRORS, outage_backoff

logger = logging.getLogger(__name__)
IDLE_SLEEP = 0.05  # longest nap between claims when nothing is due: bounds poll lateness


class LeaseLost(Exception):
    """Another worker holds the watch now; this poll's result must be dropped."""


class HostLimits:
    """One semaphore per upstream host, dropped when unused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()

    async def run(self, host: str, work: Callable[[], Awaitable[Observation]]) -> Observation:
        semaphore = self._semaphores.setdefault(host, asyncio.Semaphore(self.limit))
        self._users[host] += 1
        try:
            async with semaphore:
                return await work()
        finally:
            self._users[host] -= 1
            if not self._users[host]:
                del self._users[host], self._semaphores[host]


def policy_of(spec: dict[str, Any]) -> tuple[BackoffPolicy, int | None]:
    policy = spec["policy"]
    backoff = BackoffPolicy(
        initial_wait_time=policy["initial_wait_time"],
        backoff_factor=policy["backoff_factor"],
        jitter=policy["jitter"],
        max_interval=policy["max_interval"],
    )
    return backoff, policy["max_attempts"]


def apply_poll(doc: Doc, seen: Observation, now_ms: int) -> None:
    """Write what one poll saw onto the watch document."""
    doc["attempts"] += 1
    doc["last_polled_at"] = doc["updated_at"] = now_ms
    doc["last_error"] = seen.error
    if seen.status is not None:
        doc["last_result"] = seen.status.value
    if seen.progress is not None:
        doc["progress"] = seen.progress


def apply_end(doc: Doc, seen: Observation, webhook_url: str | None, now_ms: int) -> None:
    """Write the terminal state onto the watch document."""
    if seen.terminal and seen.status is not None:
        doc["state"] = seen.status.value
        doc["reason"] = seen.error if seen.status is Status.ERROR else None
        if seen.status is Status.COMPLETED:
            doc["progress"] = 100.0
    else:
        doc["state"] = WatchState.TIMEOUT.value
        out_of_time = now_ms >= doc["deadline"]
        doc["reason"] = "deadline reached" if out_of_time else "max_attempts reached"
    doc["finished_at"] = now_ms
    doc["next_poll_at"] = None
    if webhook_url:
        doc["webhook"]["state"] = WebhookState.PENDING.value


class Poller:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.settings = settings
        self.rng = rng or random.Random()
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.host_limits = HostLimits(settings.per_host_concurrency)
        self.polls = 0
        self.lateness_ms: deque[int] = deque(maxlen=100_000)
        self._clock_offset_ms = 0.0  # Redis time minus this process's monotonic time

    def server_now_ms(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000 + self._clock_offset_ms)

    async def run(self) -> None:
        """Claim and poll until `stopping` is set."""
        failures = 0
        while not self.stopping.is_set():
            free = self.settings.worker_concurrency - len(self.in_flight)
            if free <= 0:
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                claim = await self.store.claim(free, self.settings.lease_seconds)
            except STORE_ERRORS as exc:
                failures += 1
                delay = outage_backoff(failures)
                logger.warning("claim failed (%s); retrying in %.1fs", exc, delay)
                await self._nap(delay)
                continue
            if failures:
                logger.info("store reachable again after %d failed claims", failures)
                failures = 0
            loop_now = asyncio.get_running_loop().time() * 1000
            self._clock_offset_ms = claim.now_ms - loop_now
            for claimed in claim.watches:
                task = asyncio.create_task(self._poll(claimed))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            if len(claim.watches) < free:
                wait_ms = IDLE_SLEEP * 1000
                if claim.next_due_ms is not None:
                    wait_ms = min(wait_ms, claim.next_due_ms - claim.now_ms)
                if wait_ms > 0:
                    await self._nap(wait_ms / 1000)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def drain(self, grace_seconds: float) -> None:
        """Wait for polls in flight up to the grace period, then cancel the rest."""
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                logger.info("cancelled %d polls after the grace period", len(pending))
                await asyncio.wait(pending)

    async def _poll(self, claimed: Claimed) -> None:
        try:
            await self._poll_once(claimed)
        except LeaseLost:
            logger.info("lease on watch %s was lost mid-poll; its new holder decides", claimed.id)
        except STORE_ERRORS as exc:
            logger.warning(
                "could not save the poll of %s (%s); the lease will lapse", claimed.id, exc
            )
        except Exception:
            logger.exception("poll of watch %s failed", claimed.id)

    async def _poll_once(self, claimed: Claimed) -> None:
        doc = claimed.doc
        spec = json.loads(doc["spec"])
        url = spec["status_url"]
        started = self.server_now_ms()
        if doc["next_poll_at"] is not None:
            self.lateness_ms.append(started - doc["next_poll_at"])
        seen, claimed = await self._fetch_under_lease(claimed, url)
        now_ms = self.server_now_ms()
        apply_poll(doc, seen, now_ms)
        self.polls += 1
        backoff, max_attempts = policy_of(spec)
        remaining = (doc["deadline"] - now_ms) / 1000
        delay = next_poll_delay(backoff, seen, doc["attempts"], remaining, max_attempts, self.rng)
        if delay is None:
            apply_end(doc, seen, spec.get("webhook_url"), now_ms)
            saved = await self.store.finish(claimed, doc)
        else:
            doc["next_poll_at"] = now_ms + int(delay * 1000)
            saved = await self.store.record(claimed, doc, delay)
        if not saved:
            logger.info("lease on watch %s was lost; its new holder decides", claimed.id)

    async def _fetch_under_lease(self, claimed: Claimed, url: str) -> tuple[Observation, Claimed]:
        """Poll the upstream, extending the lease while the request (or its queue) is slow."""
        host = urlsplit(url).netloc

        async def fetch() -> Observation:
            return await fetch_status(self.session, url, self.settings.request_timeout)

        request = asyncio.ensure_future(self.host_limits.run(host, fetch))
        try:
            lease = self.settings.lease_seconds
            while True:
                done, _ = await asyncio.wait({request}, timeout=lease / 2)
                if done:
                    return request.result(), claimed
                extended = await self.store.extend(claimed, lease)
                if extended is None:
                    raise LeaseLost(claimed.id)
                claimed = extended
        finally:
            request.cancel()
