"""The poller's side of learned schedules (`service.store.durations`): each upstream's planner, and
the completions it saw.

Planners: a worker keeps each upstream's histogram for `refresh_seconds`; the upstreams of one
event-loop turn (a claimed batch) that are missing or stale are read together, in one round
trip. A histogram that cannot be read (a store error) or is garbage gives no planner: those
watches follow the blind backoff, and the garbage is logged once per upstream.

Completions: each job seen to completion is a sample (when it was last seen pending and when
seen completed, counted from its registration), summed per upstream and sent with the poller's
next batched save, in the same pipeline: at most once (a sample lost with a failed save is not
sent again, so a retried save never counts a job twice; a summary can spare one).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from client.learned import LearnedSchedule
from service.domain import WatchDoc
from service.store.durations import DurationBook, Sample, durations_of
from service.store.scripts import ScriptCall

from .capped import CappedDict
from .loop import WriteBatch
from .retry import FailureStreak

logger = logging.getLogger(__name__)
MAX_CACHED = 2048  # upstreams a worker keeps (each histogram is a few KiB)
GARBAGE_NOTED_MAX = 10_000  # upstreams remembered as logged, before the memory is cleared


def completion_sample(doc: WatchDoc, completed_ms: int) -> Sample:
    """The interval in which the watch's job ended, in seconds from its registration: after
    the last poll that saw it pending (or the registration), by the poll that saw it completed."""
    created = doc["created_at"]
    pending_at = doc.get("pending_at", created)
    return (pending_at - created) / 1000, (completed_ms - created) / 1000


class LearnedSchedules:
    def __init__(
        self,
        book: DurationBook,
        refresh_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self.book = book
        self.refresh_seconds = refresh_seconds
        self.max_cached = max_cached
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, LearnedSchedule | None]] = OrderedDict()
        self._reads: WriteBatch[str, LearnedSchedule | None] = WriteBatch(self._read_all)
        self._samples: dict[str, list[Sample]] = {}
        self._garbage: CappedDict[str, None] = CappedDict(GARBAGE_NOTED_MAX)  # logged ones
        self._read_failures = FailureStreak("poller: reading learned durations", logger)

    def cached(self, upstream: str) -> LearnedSchedule | Literal[False] | None:
        """`planner` without a coroutine when the upstream's is cached and fresh (most polls);
        False when it must be read (then await `planner`)."""
        cached = self._cache.get(upstream)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        return False

    async def planner(self, upstream: str) -> LearnedSchedule | None:
        """The upstream's planner; None while it has too few samples (or cannot be read)."""
        cached = self._cache.get(upstream)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        return await self._reads.add(upstream)

    async def _read_all(self, upstreams: list[str]) -> list[LearnedSchedule | None]:
        unique = list(dict.fromkeys(upstreams))
        try:
            stored = await self.book.read(unique)
        except Exception as exc:  # the blind backoff until the next try
            self._read_failures.failed(exc)
            stored = [{} for _ in unique]
        else:
            self._read_failures.succeeded()
        expires = self._clock() + self.refresh_seconds
        for upstream, fields in zip(unique, stored, strict=True):
            self._cache[upstream] = (expires, self._planner_of(upstream, fields))
            self._cache.move_to_end(upstream)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return [self._cache[upstream][1] for upstream in upstreams]

    def _planner_of(self, upstream: str, fields: dict[str, str]) -> LearnedSchedule | None:
        try:
            durations = durations_of(fields, self.book.half_life)
        except Exception as exc:  # garbage, or a bug reading it: never a stuck watch
            if upstream not in self._garbage:
                self._garbage[upstream] = None
                logger.warning(
                    "poller: the learned durations of %s are unreadable (%s); its watches "
                    "follow the backoff alone",
                    upstream,
                    exc,
                )
            return None
        schedule = LearnedSchedule(durations) if durations is not None else None
        return schedule if schedule is not None and schedule.trained else None

    def observe(self, upstream: str, sample: Sample) -> None:
        """A job of `upstream` completed (`completion_sample`), for the next save."""
        self._samples.setdefault(upstream, []).append(sample)

    def drain(self) -> list[ScriptCall]:
        """The samples gathered since the last drain, a script call per upstream for the
        caller's pipeline."""
        calls = [self.book.record_call(u, samples) for u, samples in self._samples.items()]
        self._samples = {}
        return calls

    @staticmethod
    def settle(results: list[Any]) -> None:
        """Log a record that failed (its samples are lost; the histogram learns on)."""
        failed = [result for result in results if isinstance(result, Exception)]
        if failed:
            logger.warning(
                "poller: %d of %d learned-duration records failed: %s",
                len(failed),
                len(results),
                failed[0],
            )
