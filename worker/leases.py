"""One lease keeper per claim loop: keeps alive the lease of every item the loop holds.

Items are held from claim until their result is written, including while they queue for a
per-host slot, so a long queue never lets a lease lapse (which would let another worker take the
item and do it a second time). One batched call per tick extends them all; only the expiry
moves, never the fencing token, so an extension cannot void a write in flight. The keeper also
knows until when each lease is confirmed: when Redis cannot be reached to extend it, that time
passes, and work with side effects (a webhook POST) is not started on a lease that may be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.store.queue import Claimed, LeasedQueue

from .retry import FailureStreak

logger = logging.getLogger(__name__)
TICKS_PER_LEASE = 3
# A lease counts as confirmed for this share of its period after the call that set it began.
CONFIRMED_SHARE = 0.9


class LeaseKeeper:
    def __init__(self, queue: LeasedQueue, lease_seconds: float, name: str) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.held: dict[str, Claimed] = {}
        self._confirmed_until: dict[str, float] = {}  # monotonic time
        self._streak = FailureStreak(f"{name}: extending leases", logger)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def hold(self, claimed: Claimed, since: float | None = None) -> None:
        """Keep `claimed` alive; `since`: when the claim that leased it was sent."""
        self.held[claimed.id] = claimed
        start = self._now() if since is None else since
        self._confirmed_until[claimed.id] = start + self.lease_seconds * CONFIRMED_SHARE

    def drop(self, claimed: Claimed) -> None:
        if self.held.get(claimed.id) is claimed:
            del self.held[claimed.id], self._confirmed_until[claimed.id]

    def taken(self, claimed: Claimed) -> bool:
        """True once the keeper found the lease taken by another claim (or let it go)."""
        return self.held.get(claimed.id) is not claimed

    def holds(self, claimed: Claimed, margin: float = 0.0) -> bool:
        """Not taken, and confirmed for at least `margin` seconds more."""
        return not self.taken(claimed) and self._now() + margin < self._confirmed_until[claimed.id]

    async def confirm(self, claimed: Claimed, margin: float) -> bool:
        """True if the lease is ours for `margin` seconds more, extending it now if need be."""
        if self.holds(claimed, margin):
            return True
        if self.taken(claimed):
            return False
        await self._extend([claimed])
        return self.holds(claimed, margin)

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
        await self._extend(list(self.held.values()))

    async def _extend(self, items: list[Claimed]) -> None:
        sent_at = self._now()
        kept = await self.queue.extend(items, self.lease_seconds)
        for claimed, ok in zip(items, kept, strict=True):
            if self.taken(claimed):
                continue  # written and dropped meanwhile
            if ok:
                self._confirmed_until[claimed.id] = sent_at + self.lease_seconds * CONFIRMED_SHARE
            else:
                self.drop(claimed)
                # Taken by another claim, or its watch ended (a cancel): the loop tells which.
                logger.debug("lease on %s is no longer held", claimed.id)

    async def release_all(self) -> None:
        """Give back what is still held (shutdown): due at once for another worker."""
        items = list(self.held.values())
        if not items:
            return
        self.held.clear()
        self._confirmed_until.clear()
        try:
            await self.queue.release(items)
        except Exception as exc:  # the leases then simply lapse
            logger.warning("could not release %d leases (%s); they will lapse", len(items), exc)
        else:
            logger.info("released %d leases for other workers", len(items))
