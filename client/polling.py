"""`VideoTranslationClient`: poll one upstream until its job ends, within a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ._session import OwnsSession
from .backoff import (
    BACKOFF_FACTOR,
    INITIAL_WAIT_TIME,
    JITTER,
    MAX_INTERVAL,
    BackoffPolicy,
    first_poll_delay,
    next_poll_delay,
)
from .errors import ConfigurationError
from .learned import ScheduleHistory
from .upstream import Observation, Status, Upstream, fetch_status

logger = logging.getLogger(__name__)

# `PollResult.updates` keeps this many of the latest updates: a poll of days stays small.
KEPT_UPDATES = 100


class StatusUpdate(str):
    """What `on_update` receives after every poll: the status string, with details attached.

    It *is* the status (`update == "pending"`), so callbacks written for plain strings keep
    working; `attempt`, `elapsed`, `progress`, `eta_seconds`, `error` (a transient failure,
    in which case the status is the last one known) and `next_poll_in` tell more.

    `next_poll_in` is when the next request is due, counted from this observation (None: this
    was the last). Time spent in `on_update` counts against it: a callback that outlasts it
    delays the next request until it returns, and one that outlasts the deadline ends the poll.
    """

    attempt: int
    elapsed: float
    progress: float | None
    eta_seconds: float | None
    error: str | None
    next_poll_in: float | None

    def __new__(
        cls,
        status: str,
        *,
        attempt: int,
        elapsed: float,
        progress: float | None = None,
        eta_seconds: float | None = None,
        error: str | None = None,
        next_poll_in: float | None = None,
    ) -> StatusUpdate:
        update = super().__new__(cls, status)
        update.attempt = attempt
        update.elapsed = elapsed
        update.progress = progress
        update.eta_seconds = eta_seconds
        update.error = error
        update.next_poll_in = next_poll_in
        return update

    @property
    def status(self) -> Status:
        return Status(str(self))


OnUpdate = Callable[[StatusUpdate], Awaitable[Any] | Any]


@dataclass(slots=True)
class PollResult:
    """The story of one `poll()`: final status, attempts, elapsed seconds, the latest updates.

    `elapsed` runs until `poll()` returns (the last `on_update` included). `updates` holds only
    the last `KEPT_UPDATES` (100) so a long poll stays small; `on_update` sees every one.
    """

    status: Status
    attempts: int
    elapsed: float
    last_error: str | None = None
    # What the job produced, read by the `Upstream`'s `result` path (see `Observation`).
    result: Any = None
    result_truncated: bool = False
    updates: deque[StatusUpdate] = field(default_factory=lambda: deque(maxlen=KEPT_UPDATES))


class VideoTranslationClient(OwnsSession):
    """Polls `GET {base_url}/status` with capped exponential backoff and jitter.

    `get_status()` returns `'completed'`, `'error'` or `'timeout'` (a `Status`, equal to those
    strings). Elapsed time is measured on a monotonic clock including request time; the last
    poll happens at the deadline; no request starts after it, and the total never exceeds
    `max_wait_time` + `request_timeout` (+ the last `on_update`'s own time).
    Use it with or without `async with`; an injected `session` is never closed by the client.

    With a `history` (a `ScheduleHistory`, shared between clients and persisted by the caller),
    every job seen to completion is recorded, counted from the start of `poll()`; once its
    upstream has enough samples and while `adaptive`, polls follow the learned schedule within
    the same bounds. Without one the schedule is the blind backoff alone.

    With an `upstream` (`Upstream`: a preset of `client.presets`, status rules, headers),
    `base_url` is the job's own status URL (unless a `status_path` is given), polled with the
    upstream's headers and read by its rules; `PollResult.result` holds what the job produced.
    """

    def __init__(
        self,
        base_url: str,
        max_attempts: int | None = 10,
        max_wait_time: float = 60,
        initial_wait_time: float = INITIAL_WAIT_TIME,
        backoff_factor: float = BACKOFF_FACTOR,
        jitter: float = JITTER,
        *,
        max_interval: float = MAX_INTERVAL,
        jitter_ratio: float = 0.0,
        request_timeout: float = 10.0,
        status_path: str | None = None,
        headers: dict[str, str] | None = None,
        upstream: Upstream | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        history: ScheduleHistory | None = None,
        adaptive: bool = True,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts!r}")
        if not max_wait_time > 0:
            raise ConfigurationError(f"max_wait_time must be positive, got {max_wait_time!r}")
        if not request_timeout > 0:
            raise ConfigurationError(f"request_timeout must be positive, got {request_timeout!r}")
        self.base_url = base_url
        if status_path is None:  # the original protocol's path; another API's URL as given
            status_path = "/status" if upstream is None else ""
        self.status_url = base_url.rstrip("/") + status_path if status_path else base_url
        self.max_attempts = max_attempts
        self.max_wait_time = float(max_wait_time)
        self.request_timeout = float(request_timeout)
        self.policy = BackoffPolicy(
            initial_wait_time=initial_wait_time,
            backoff_factor=backoff_factor,
            jitter=jitter,
            jitter_ratio=jitter_ratio,
            max_interval=max_interval,
        )
        self.upstream = upstream
        # The upstream's headers (its credentials), then the caller's own.
        self.headers = {**(upstream.headers if upstream else {}), **(headers or {})} or None
        self.reader = upstream.reader() if upstream else None
        self._session = session
        self._owned_session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self.history = history
        self.adaptive = adaptive

    async def __aenter__(self) -> VideoTranslationClient:
        if self._session is None and self._owned_session is None:
            self._owned_session = aiohttp.ClientSession()
        return self

    async def get_status(self, on_update: OnUpdate | None = None) -> Status:
        """Poll until the job ends or the deadline passes: 'completed', 'error' or 'timeout'."""
        return (await self.poll(on_update)).status

    async def check(self) -> Observation:
        """One request, no waiting: what the upstream says right now."""
        async with self._session_for_call() as session:
            return await self._fetch(session)

    async def poll(self, on_update: OnUpdate | None = None) -> PollResult:
        """Like `get_status`, returning the attempts, elapsed time, last error and updates."""
        async with self._session_for_call() as session:
            return await self._poll(session, on_update)

    async def _fetch(self, session: aiohttp.ClientSession) -> Observation:
        return await fetch_status(
            session, self.status_url, self.request_timeout, self.headers, reader=self.reader
        )

    @contextlib.asynccontextmanager
    async def _session_for_call(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The injected or `async with` session, else one opened and closed for this call."""
        session = self._session or self._owned_session
        if session is not None:
            yield session
            return
        async with aiohttp.ClientSession() as temporary:
            yield temporary

    async def _poll(self, session: aiohttp.ClientSession, on_update: OnUpdate | None) -> PollResult:
        start = self._clock()
        deadline = start + self.max_wait_time
        result = PollResult(Status.TIMEOUT, attempts=0, elapsed=0.0)
        known = Status.PENDING
        planner = None
        if self.history is not None and self.adaptive:
            planner = self.history.schedule(self.status_url)
        first_wait = first_poll_delay(
            self.policy, self.max_wait_time, self._rng, planner, self.max_attempts
        )
        if first_wait > 0:
            await self._sleep(first_wait)
        pending_since = 0.0  # the job was still pending this many seconds after the start
        while True:
            result.attempts += 1
            sent_at = self._clock() if self.history is not None else start
            seen = await self._fetch(session)
            seen_at = self._clock()
            if seen.error:
                result.last_error = seen.error
                logger.debug(
                    "poll %d of %s failed: %s", result.attempts, self.status_url, seen.error
                )
            known = seen.status or known
            if seen.status == Status.PENDING:
                pending_since = sent_at - start
            elif seen.status == Status.COMPLETED and self.history is not None:
                self.history.record(self.status_url, pending_since, seen_at - start)
            next_poll_in = next_poll_delay(
                self.policy,
                seen,
                result.attempts,
                deadline - seen_at,
                self.max_attempts,
                self._rng,
                planner=planner,
                elapsed=seen_at - start,
            )
            update = StatusUpdate(
                known,
                attempt=result.attempts,
                elapsed=seen_at - start,
                progress=seen.progress,
                eta_seconds=seen.eta_seconds,
                error=seen.error,
                next_poll_in=next_poll_in,
            )
            result.updates.append(update)
            if on_update is not None:
                outcome = on_update(update)
                if inspect.isawaitable(outcome):
                    await outcome
            now = self._clock()
            result.elapsed = now - start
            # A callback that ran past the deadline ends the poll: no request after the deadline.
            if next_poll_in is None or now > deadline:
                result.status = seen.status if seen.terminal and seen.status else Status.TIMEOUT
                result.result, result.result_truncated = seen.result, seen.result_truncated
                return result
            # The next poll is due at seen_at + next_poll_in (by the deadline at the latest);
            # the callback's time counts against that wait.
            await self._sleep(max(0.0, seen_at + next_poll_in - now))
