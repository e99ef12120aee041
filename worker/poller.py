"""The poller: claims due watches and polls their upstreams.

Each poll uses `client/`'s upstream protocol (`fetch_status`) and its next-poll rule
(`next_poll_delay`), then records the result, or the terminal state with its webhook, under the
lease it was claimed with. Concurrency is bounded per process and per upstream host.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

import aiohttp

from client.backoff import next_poll_delay
from client.upstream import Observation, Status, fetch_status
from service.domain import WatchState, WebhookState
from service.settings import Settings
from service.store import Claim, Claimed, Doc, Store

from .loop import ClaimLoop, HostLimits, LeaseLost, WriteBatch
from .retry import STORE_ERRORS
from .spec import parse_spec

logger = logging.getLogger(__name__)


def apply_poll(doc: Doc, seen: Observation, now_ms: int) -> None:
    """Write what one poll saw onto the watch document."""
    doc["attempts"] += 1
    doc["last_polled_at"] = doc["updated_at"] = now_ms
    doc["last_error"] = seen.error
    if seen.status is not None:
        doc["last_result"] = seen.status.value
    if seen.progress is not None:
        doc["progress"] = round(seen.progress, 2)


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


class Poller(ClaimLoop):
    name = "poller"

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings.worker_concurrency, settings.lease_seconds)
        self.store = store
        self.session = session
        self.settings = settings
        self.rng = rng or random.Random()
        # A per-host limit at or above the process's concurrency could never bind: skip its cost.
        self.host_limits = (
            HostLimits(settings.per_host_concurrency)
            if settings.per_host_concurrency < settings.worker_concurrency
            else None
        )
        self.writes: WriteBatch[tuple[Claimed, Doc], bool] = WriteBatch(store.save)
        self.leases: dict[str, Claimed | None] = {}  # polls in flight; None: lease lost
        self.polls = 0
        self.lateness_ms: deque[int] = deque(maxlen=100_000)

    async def claim(self, limit: int) -> Claim:
        return await self.store.claim(limit, self.lease_seconds)

    async def run(self) -> None:
        keeper = asyncio.create_task(self._keep_leases())
        try:
            await super().run()
        finally:
            keeper.cancel()

    async def handle(self, claimed: Claimed) -> None:
        doc = claimed.doc
        spec = parse_spec(doc["spec"])
        if doc["next_poll_at"] is not None:
            self.lateness_ms.append(self.server_now_ms() - doc["next_poll_at"])
        self.leases[claimed.id] = claimed
        try:
            if self.host_limits is None:
                seen = await self._fetch(spec.status_url)
            else:
                seen = await self.host_limits.run(spec.host, lambda: self._fetch(spec.status_url))
        finally:
            current = self.leases.pop(claimed.id)
        if current is None:
            raise LeaseLost(claimed.id)
        now_ms = self.server_now_ms()
        apply_poll(doc, seen, now_ms)
        self.polls += 1
        remaining = (doc["deadline"] - now_ms) / 1000
        delay = next_poll_delay(
            spec.backoff, seen, doc["attempts"], remaining, spec.max_attempts, self.rng
        )
        if delay is None:
            apply_end(doc, seen, spec.webhook_url, now_ms)
        else:
            doc["next_poll_at"] = now_ms + int(delay * 1000)
        if not await self.writes.add((current, doc)):
            raise LeaseLost(claimed.id)

    async def _fetch(self, url: str) -> Observation:
        return await fetch_status(self.session, url, self.settings.request_timeout)

    async def _keep_leases(self) -> None:
        """Extend the leases of polls that run (or queue for their host) for long."""
        lease_ms = self.lease_seconds * 1000
        while True:
            await asyncio.sleep(self.lease_seconds / 4)
            now_ms = self.server_now_ms()
            for watch_id, claimed in list(self.leases.items()):
                if claimed is None or claimed.token - now_ms > lease_ms / 2:
                    continue
                try:
                    extended = await self.store.extend(claimed, self.lease_seconds)
                except STORE_ERRORS as exc:
                    logger.warning("could not extend the lease on %s: %s", watch_id, exc)
                    continue
                if watch_id in self.leases:
                    self.leases[watch_id] = extended
