"""The poller: claims due watches and polls their upstreams.

Each poll uses `client/`'s upstream protocol (`fetch_status`) and its next-poll rule
(`next_poll_delay`), then records the result, or the terminal state with its webhook, under the
lease it was claimed with. Concurrency is bounded per process and per upstream host, and each
request is admitted by the host's fleet-wide budget and circuit breaker (`budget.py`): a poll
over budget, or of a host whose breaker is open, is put off without spending an attempt, never
past the deadline (a short grace for the budget), and a watch still refused then ends as
`timeout` without a request. Whatever an upstream sends, and whatever fails inside a poll, the
poll ends as an observation, so every watch meets its deadline.

Adaptive watches (`policy.adaptive`) are scheduled from what the fleet learned of their
upstream's job durations (`schedules.py`): the first poll may wait (no request until jobs there
start ending), later ones are placed where jobs usually end; `next_poll_delay` holds them to the
policy's bounds and lets hints win. Every job seen to completion teaches its upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import cast

import aiohttp
from redis.exceptions import RedisError

from client.backoff import Planner, first_poll_delay, next_poll_delay
from client.upstream import Observation, Status, fetch_status
from service.domain import WatchDoc, WatchState, WebhookState
from service.logs import watch_fields
from service.metrics import (
    INFLIGHT_POLLS,
    POLL_DURATION,
    POLLS,
    POLLS_DEFERRED,
    SCHEDULE_LAG,
    WATCHES_FINISHED,
)
from service.sealing import UNREADABLE_DETAIL, Sealer
from service.settings import Settings
from service.store.queue import Claimed
from service.store.watches import Store

from .budget import Admission, HostBudget, policy_of
from .loop import ClaimLoop, Deferred, LeaseLost, WriteBatch
from .partitions import Assignment, PartitionPicker
from .retry import FailureStreak, outage_backoff
from .schedules import LearnedSchedules, completion_sample
from .spec import SpecCache, WatchSpec

logger = logging.getLogger(__name__)
DEFERRED = {
    name: POLLS_DEFERRED.labels(name)
    for name in ("budget", "budget_unavailable", "breaker", "host_share")
}
# A poll over the host's budget may wait this long past the deadline for its last request (less
# than a request timeout); one refused by an open breaker may not (the host is failing anyway).
DEADLINE_GRACE_MS = 5_000
REFUSED = {
    "budget": "no request at the deadline: the host's request budget was used up",
    "breaker": "no request at the deadline: the host's circuit breaker was open",
    "budget_unavailable": "no request at the deadline: the host's request budget could not be "
    "read (the store failed)",
}


def advance(
    doc: WatchDoc,
    spec: WatchSpec,
    seen: Observation,
    now_ms: int,
    rng: random.Random,
    *,
    planner: Planner | None = None,
    sent_ms: int | None = None,
) -> WatchDoc:
    """The watch after one poll (sent at `sent_ms`, answered by `now_ms`) saw `seen`: a new
    document, due again (when the `planner`, if any, says within the rules) or ended."""
    new = cast(WatchDoc, {**doc})  # its webhook shared: only `end` changes it (a copy)
    new["attempts"] += 1
    new["last_polled_at"] = new["updated_at"] = now_ms
    new["last_error"] = seen.error
    if seen.status is not None:
        new["last_result"] = seen.status.value
    if seen.status is Status.PENDING:
        new["pending_at"] = now_ms if sent_ms is None else sent_ms
    if seen.progress is not None:
        new["progress"] = round(seen.progress, 2)
    if seen.result is not None:
        new["result"], new["result_truncated"] = seen.result, seen.result_truncated
    remaining = (new["deadline"] - now_ms) / 1000
    delay = next_poll_delay(
        spec.backoff,
        seen,
        new["attempts"],
        remaining,
        spec.max_attempts,
        rng,
        planner=planner,
        elapsed=(now_ms - new["created_at"]) / 1000,
    )
    if delay is None:
        end(new, seen, spec.webhook_url, now_ms)
    else:
        new["next_poll_at"] = now_ms + int(delay * 1000)
    return new


def plan_first_poll(
    doc: WatchDoc, spec: WatchSpec, planner: Planner | None, now_ms: int, rng: random.Random
) -> WatchDoc | None:
    """A new watch due later than now, at its planned first poll (learned; the deadline for a
    watch of one attempt; `initial_wait_time` for a watch with push callbacks, whose job the
    caller may create only after registering it; no request before it); None: poll now (its
    first poll is already planned, a callback came, or it is not worth putting off)."""
    if doc["attempts"] or doc["next_poll_at"] != doc["created_at"] or doc.get("pushed"):
        return None
    remaining = (doc["deadline"] - doc["created_at"]) / 1000
    wait = first_poll_delay(spec.backoff, remaining, rng, planner, spec.max_attempts)
    if spec.callback:  # the push comes first; its job may not even exist yet (register first)
        wait = max(wait, min(spec.backoff.initial_wait_time, remaining))
    due = doc["created_at"] + int(wait * 1000)
    if due <= now_ms:
        return None
    return cast(WatchDoc, {**doc, "next_poll_at": due, "updated_at": now_ms})


def refused(doc: WatchDoc, spec: WatchSpec, reason: str, now_ms: int) -> WatchDoc:
    """The watch ended at its deadline without a last request (its host refused it): timeout,
    no attempt spent."""
    new = cast(WatchDoc, {**doc})
    new["updated_at"] = now_ms
    new["last_error"] = REFUSED[reason]
    end(new, Observation(None, error=REFUSED[reason]), spec.webhook_url, now_ms)
    return new


def end(doc: WatchDoc, seen: Observation, webhook_url: str | None, now_ms: int) -> None:
    """Write the terminal state onto the watch document (a new webhook dict: the claimed
    document's is shared)."""
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
        doc["webhook"] = {**doc["webhook"], "state": WebhookState.PENDING.value}


class Poller(ClaimLoop):
    name = "poller"

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        assignment: Assignment | None = None,
    ) -> None:
        super().__init__(
            store.schedule,
            settings.worker_concurrency,
            settings.lease_seconds,
            settings.per_host_concurrency,
            assignment,
        )
        self.store = store
        self.session = session
        self.settings = settings
        self.rng = rng or random.Random()
        self.specs = SpecCache(settings.min_poll_interval, sealer=Sealer.from_settings(settings))
        self.budget = HostBudget(store.hosts, policy_of(settings), self.rng)
        self.schedules = LearnedSchedules(store.durations, settings.learned_refresh_seconds)
        self._budget_failures = FailureStreak(f"{self.name}: taking host budgets", logger)
        self.writes: WriteBatch[tuple[Claimed, WatchDoc], bool] = WriteBatch(self._save)
        self.polls = 0
        # The dispatcher's picker in this process, told of the webhooks this poller queues.
        self.outbox_picker: PartitionPicker | None = None
        # Each claimed poll's lateness (ms), kept only while a bench sets it (bench/_lateness.py).
        self.lateness_ms: deque[int] | None = None
        INFLIGHT_POLLS.set_function(lambda: len(self.in_flight))

    async def handle(self, claimed: Claimed) -> None:
        doc = claimed.doc
        spec = self.specs.get(doc["spec"])
        if doc["next_poll_at"] is not None:
            lateness_ms = self.server_now_ms() - doc["next_poll_at"]
            if self.lateness_ms is not None:
                self.lateness_ms.append(lateness_ms)
            SCHEDULE_LAG.observe(max(0, lateness_ms) / 1000)
        planner: Planner | None = None
        if spec.adaptive:  # cached and fresh without a coroutine; else read (batched)
            cached = self.schedules.cached(spec.upstream)
            planner = await self.schedules.planner(spec.upstream) if cached is False else cached
        put_off = plan_first_poll(doc, spec, planner, self.server_now_ms(), self.rng)
        if put_off is not None:
            await self._write(claimed, put_off)
            return
        try:
            async with self.host_slot(spec.host):
                polled = await self._poll(claimed, spec)
        except Deferred as deferred:
            DEFERRED[deferred.reason].inc()
            raise
        if self.keeper.taken(claimed):
            raise LeaseLost(claimed.id)
        now_ms = self.server_now_ms()
        if isinstance(polled, str):
            updated = refused(doc, spec, polled, now_ms)
        else:
            seen, sent_ms = polled
            POLLS.inc(seen.status.value if seen.status is not None else "transient")
            try:
                updated = advance(
                    doc, spec, seen, now_ms, self.rng, planner=planner, sent_ms=sent_ms
                )
            except Exception:
                logger.exception(
                    "poller: applying a poll of %s failed",
                    claimed.id,
                    extra=watch_fields(doc, doc["attempts"] + 1),
                )
                updated = advance(doc, spec, unexpected("applying the poll"), now_ms, self.rng)
            self.polls += 1
            if updated["state"] == WatchState.COMPLETED:
                self.schedules.observe(spec.upstream, completion_sample(doc, now_ms))
        await self._write(claimed, updated)
        if updated["state"] != WatchState.PENDING:
            WATCHES_FINISHED.labels(updated["state"]).inc()

    async def _write(self, claimed: Claimed, updated: WatchDoc) -> None:
        """Save under the lease, then tell this process's pickers when the partition has
        something due next: the watch's next poll, or its webhook (at once)."""
        item = (claimed, updated)
        try:  # most saves: one await, no retrying wrapper on the poll's await chain
            saved = await self.writes.add(item)
        except (RedisError, OSError):  # as `write_while_held`, which goes on from here
            delay = outage_backoff(1)
            if not self.keeper.holds(claimed, margin=delay):
                raise
            await asyncio.sleep(delay)
            saved = await self.write_while_held(claimed, lambda: self.writes.add(item), 1)
        if not saved:
            raise LeaseLost(claimed.id)
        partition = self.store.keys.of(claimed.id).number
        if updated["next_poll_at"] is not None:
            self.picker.scheduled(partition, updated["next_poll_at"])
        elif updated["webhook"]["state"] == WebhookState.PENDING and self.outbox_picker:
            self.outbox_picker.scheduled(partition, updated["updated_at"])

    async def _poll(self, claimed: Claimed, spec: WatchSpec) -> tuple[Observation, int] | str:
        """One request if the host's budget and breaker admit it: what it saw, and when it was
        sent (Redis time); else the poll is put off (`Deferred`), or, at the deadline, the
        reason it was refused is returned."""
        tenant = claimed.doc["tenant"]
        try:  # tokens taken ahead first, without a coroutine (most polls of a busy host)
            admission = self.budget.spend_credit(
                spec.host, spec.port, tenant
            ) or await self.budget.ask(spec.host, spec.port, tenant)
        except Exception as exc:  # no budget known: no request (the store is likely failing)
            wait = self._budget_failures.failed(exc)
            admission = Admission(False, wait, "budget_unavailable")
        else:
            self._budget_failures.succeeded()
        if not admission.go:
            return self._refuse(claimed.doc, admission)
        sent_ms, started = self.server_now_ms(), time.perf_counter()
        if spec.unreadable:  # polling without its credentials would be refused, or worse
            return Observation(Status.ERROR, error=UNREADABLE_DETAIL), sent_ms
        try:  # anything unexpected is a transient failure (the deadline still holds)
            seen = await fetch_status(
                self.session,
                spec.status_target,
                self.settings.request_timeout,
                spec.headers,
                follow_redirects=False,
                reader=spec.reader,
            )
        except Exception:
            logger.exception(
                "poller: polling the upstream of %s failed",
                claimed.id,
                extra=watch_fields(claimed.doc, claimed.doc["attempts"] + 1),
            )
            seen = unexpected("polling the upstream")
        finally:  # cancelled polls included
            POLL_DURATION.observe(time.perf_counter() - started)
        self.budget.observe(tenant, spec.host, spec.port, seen, admission.probe)
        return seen, sent_ms

    def _refuse(self, doc: WatchDoc, admission: Admission) -> str:
        """Put the poll off for as long as the admission says, never past its last chance;
        at the last chance, return why (the watch ends)."""
        grace = DEADLINE_GRACE_MS if admission.reason == "budget" else 0
        last_chance = doc["deadline"] + grace
        left_ms = last_chance - self.server_now_ms()
        if left_ms <= 0:
            return admission.reason
        raise Deferred(min(admission.wait_seconds, left_ms / 1000), admission.reason)

    async def _save(self, polls: list[tuple[Claimed, WatchDoc]]) -> list[bool]:
        """Save a batch of polls, the host reports and completions gathered meanwhile in the
        same pipeline."""
        host_calls, reports = self.budget.drain()
        records = self.schedules.drain()
        saved, results = await self.store.save_with(polls, [*host_calls, *records])
        self.budget.settle(results[: len(host_calls)], reports)
        self.schedules.settle(results[len(host_calls) :])
        return saved


def unexpected(during: str) -> Observation:
    return Observation(None, error=f"internal error while {during}", internal=True)
