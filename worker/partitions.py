"""How workers share the partitions of the schedule and the outbox (docs/scale.md).

* **Owners by rendezvous hashing.** Every worker beats in the roster (`service.store.roster`, Redis
  time) every `BEAT_SECONDS`; each partition's owner is the live worker with the highest
  hash of (worker, partition). Every worker computes the same map from the same roster, with no
  coordination; a worker that joins or leaves moves only the partitions it wins or held (about
  P / W of them).
* **Bounded probing.** A loop claims from its own partitions, the one due soonest first. It
  knows when each is due next from its claims' replies (the schedule's head) and from its own
  saves; new registrations are found by re-probing each own partition every `recheck`, spread
  so that a loop sends at most `PROBES_PER_NAP` empty claims per nap, whatever P is.
* **Helping.** A loop with nothing to do reads, at most once per `HELP_SECONDS`, the head of
  every other partition (one pipelined round trip of ZRANGE 0 0) and helps the `HELP_MAX`
  partitions whose head is overdue by more than `HELP_LAG_MS` (an owner fallen behind, or gone
  before the roster noticed), until a claim there comes back short.

Two workers may claim from one partition (a map in transition, a helper): each claim is atomic
and every write is fenced by its lease, so that costs a few empty claims, never a double poll.
With P = 1 the single partition is everyone's and no roster is kept: the loop behaves as an
unpartitioned one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import socket

from service.metrics import PARTITIONS_OWNED
from service.store.queue import LeasedQueue
from service.store.roster import Roster

from .retry import FailureStreak

logger = logging.getLogger(__name__)
BEAT_SECONDS = 2.0
ROSTER_TTL_SECONDS = 10.0  # a worker silent this long is taken off the roster
PROBES_PER_NAP = 4
HELP_SECONDS = 1.0
HELP_MAX = 2
HELP_LAG_MS = 1_000


def owners(workers: list[str], partitions: int) -> list[str]:
    """The owner of each partition among `workers` (rendezvous hashing)."""
    return [max(workers, key=lambda worker: _weight(worker, p)) for p in range(partitions)]


def _weight(worker: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{worker}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Assignment:
    """This worker's partitions, kept current by its heartbeats; shared by its loops. Until the
    first beat succeeds (and while Redis cannot be reached) the last map holds: at first, every
    partition. Without a roster (a loop on its own, in tests), every partition, always."""

    def __init__(self, roster: Roster | None, partitions: int) -> None:
        self.roster = roster
        self.partitions = partitions
        self.worker_id = f"{socket.gethostname()}/{secrets.token_hex(4)}"
        self.own: frozenset[int] = frozenset(range(partitions))
        self.others: tuple[int, ...] = ()
        self._streak = FailureStreak("worker roster heartbeat", logger)

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until `stop`, then leave the roster (others take the partitions at once)."""
        if self.roster is None or self.partitions == 1:
            return
        while not stop.is_set():
            try:
                live = await self.roster.beat(self.worker_id, ROSTER_TTL_SECONDS)
            except Exception as exc:  # keep the last map; fencing keeps overlaps correct
                self._streak.failed(exc)
            else:
                self._streak.succeeded()
                self.assign(live)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT_SECONDS)
        try:
            await self.roster.leave(self.worker_id)
        except Exception as exc:  # the others drop it after the TTL
            logger.info("could not leave the worker roster (%s)", exc)

    def assign(self, live: list[str]) -> None:
        mine = self.worker_id
        owner_of = owners(sorted(set(live) | {mine}), self.partitions)
        own = frozenset(p for p, owner in enumerate(owner_of) if owner == mine)
        if own != self.own:
            logger.info(
                "partitions: %d live workers, %d of %d partitions here",
                len(set(live) | {mine}),
                len(own),
                self.partitions,
            )
        self.own = own
        self.others = tuple(p for p in range(self.partitions) if p not in own)
        PARTITIONS_OWNED.set(len(own))


class PartitionPicker:
    """Which partition a claim loop claims from next (times are Redis milliseconds)."""

    def __init__(self, assignment: Assignment, queue: LeasedQueue, nap_ms: float) -> None:
        self.assignment = assignment
        self.queue = queue
        self.nap_ms = nap_ms
        self._next_ms: dict[int, float] = {}  # partition -> when worth a claim again
        self._helping: set[int] = set()
        self._helped_at = -math.inf

    def _active(self) -> set[int]:
        return set(self.assignment.own) | self._helping

    def recheck_ms(self) -> float:
        """How long a claim that came back short leaves its partition alone, at most."""
        return max(self.nap_ms, len(self.assignment.own) * self.nap_ms / PROBES_PER_NAP)

    def pick(self, now_ms: float) -> int | None:
        """The partition due soonest among those worth a claim now; None if none is."""
        due = [(self._next_ms.get(p, -math.inf), p) for p in self._active()]
        ready = [entry for entry in due if entry[0] <= now_ms]
        return min(ready)[1] if ready else None

    def wait_ms(self, now_ms: float) -> float:
        """How long until a partition is worth a claim (at most one nap)."""
        soonest = min((self._next_ms.get(p, -math.inf) for p in self._active()), default=math.inf)
        return max(0.0, min(self.nap_ms, soonest - now_ms))

    def claimed(self, partition: int, now_ms: int, next_due_ms: int | None, full: bool) -> None:
        """A claim on `partition` came back: full (more may be due) or short."""
        if full:
            self._next_ms[partition] = now_ms
            return
        self._helping.discard(partition)
        recheck = now_ms + self.recheck_ms()
        self._next_ms[partition] = recheck if next_due_ms is None else min(next_due_ms, recheck)

    def scheduled(self, partition: int, due_ms: int) -> None:
        """An item of `partition` was put due at `due_ms` (a save of this process)."""
        self._next_ms[partition] = min(self._next_ms.get(partition, math.inf), due_ms)

    async def help(self, now_ms: float, clock_ms: float) -> None:
        """Idle: take up the most overdue other partitions, at most once per `HELP_SECONDS`
        (`clock_ms`: this process's monotonic clock)."""
        if clock_ms - self._helped_at < HELP_SECONDS * 1000:
            return
        others = [p for p in self.assignment.others if p not in self._helping]
        if not others:
            return
        self._helped_at = clock_ms
        heads = await self.queue.heads(others)
        overdue = sorted(
            (head, p)
            for p, head in zip(others, heads, strict=True)
            if head is not None and head <= now_ms - HELP_LAG_MS
        )
        for _, p in overdue[: HELP_MAX - len(self._helping)]:
            self._helping.add(p)
            self._next_ms[p] = now_ms
