"""One lease keeper per claim loop: keeps alive the lease of every item the loop holds.

Items are held from claim until their result is written, including while they queue for a
per-host slot, so a long queue never lets a lease lapse (which would let another worker take the
item and do it a second time). One batched call per tick extends them all; only the expiry
moves, never the fencing token, so an extension cannot void a write in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.leases import Claimed, LeasedQueue

from .retry import FailureStreak

logger = logging.getLogger(__name__)
TICKS_PER_LEASE = 3


class LeaseKeeper:
    def __init__(self, queue: LeasedQueue, lease_seconds: float, name: str) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.held: dict[str, Claimed] = {}
        self.lost = 0
        self._streak = FailureStreak(f"{name}: extending leases", logger)

    def hold(self, claimed: Claimed) -> None:
        self.held[claimed.id] = claimed

    def drop(self, claimed: Claimed) -> None:
        if self.held.get(claimed.id) is claimed:
            del self.held[claimed.id]

    def holds(self, claimed: Claimed) -> bool:
        """False once the keeper found the lease taken by another claim."""
        return self.held.get(claimed.id) is claimed

    async def run(self, stop: asyncio.Event) -> None:
        """Extend every held lease each `lease_seconds / 3` until `stop` is set."""
        interval = self.lease_seconds / TICKS_PER_LEASE
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                await self.extend_all()
            except Exception as exc:  # any Redis state: keep trying, leases may still be saved
                self._streak.failed(exc)
            else:
                self._streak.succeeded()

    async def extend_all(self) -> None:
        items = list(self.held.values())
        kept = await self.queue.extend(items, self.lease_seconds)
        for claimed, ok in zip(items, kept, strict=True):
            if not ok and self.holds(claimed):
                self.lost += 1
                self.drop(claimed)
                logger.info("lease on %s was lost to another claim", claimed.id)

    async def release_all(self) -> None:
        """Give back what is still held (shutdown): due at once for another worker."""
        items = list(self.held.values())
        if not items:
            return
        self.held.clear()
        try:
            await self.queue.release(items)
        except Exception as exc:  # the leases then simply lapse
            logger.warning("could not release %d leases (%s); they will lapse", len(items), exc)
        else:
            logger.info("released %d leases for other workers", len(items))
