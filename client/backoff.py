"""The backoff policy: a pure function from (attempt, remaining time, hints, RNG) to a delay.

Exponential growth from `initial_wait_time` by `backoff_factor`, capped at `max_interval`, then
jittered (after the cap, so capped pollers do not fall into lockstep) by `±jitter` seconds plus
`±jitter_ratio` of the delay. Deadline-aware (the Smithy waiter rule): when the next sleep would
leave less than `initial_wait_time` before the deadline, sleep exactly to the deadline so the last
poll happens there; and the last attempt `max_attempts` allows is kept for the deadline (with
`max_attempts` 1 the one poll waits for it), so a job that ends in time is never a timeout.
Server hints (`Retry-After`, an ETA) replace the blind schedule within bounds, and so, after
plain pending answers, does a `Planner`'s proposal (a schedule learned from past jobs,
`client.learned`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigurationError
from .upstream import Observation, Status

# A sleep may end a hair before the deadline; that is the deadline, not a reason to poll again.
CLOCK_SLACK = 1e-3

# The policy's defaults, in one place (the client's contract in DESIGN.md); the watch service's
# Policy and the command line take theirs from here.
INITIAL_WAIT_TIME = 1.0
BACKOFF_FACTOR = 2.0
JITTER = 0.5
MAX_INTERVAL = 10.0  # waiting on one job: notice its end within ten seconds
SERVICE_MAX_INTERVAL = 60.0  # the service's fleets of long jobs: one poll a minute at most


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_wait_time: float = INITIAL_WAIT_TIME
    backoff_factor: float = BACKOFF_FACTOR
    jitter: float = JITTER
    jitter_ratio: float = 0.0
    max_interval: float = MAX_INTERVAL
    # No sleep is shorter than this (nor than initial_wait_time): no hot loop, whatever the hints.
    min_interval: float = 0.25
    # Upper bound for a delay a server asks for (Retry-After, ETA).
    max_hint_interval: float = 600.0
    # While an ETA is far, aim this share early (ETAs err in proportion to what is left) ...
    eta_margin: float = 0.12
    # ... and aim right at it once that error is below this many seconds.
    eta_tolerance: float = 0.5
    # The floor of every delay, the last one to the deadline included (the watch service's
    # VTW_MIN_POLL_INTERVAL, so no caller can make it poll a host faster); 0: none.
    min_delay: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "initial_wait_time": self.initial_wait_time > 0,
            "backoff_factor": self.backoff_factor >= 1,
            "jitter": self.jitter >= 0,
            "jitter_ratio": 0 <= self.jitter_ratio <= 1,
            "max_interval": self.max_interval > 0,
            "min_interval": self.min_interval > 0,
            "max_hint_interval": self.max_hint_interval > 0,
            "eta_margin": 0 <= self.eta_margin < 1,
            "eta_tolerance": self.eta_tolerance >= 0,
            "min_delay": self.min_delay >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ConfigurationError(f"{name} is out of range: {value!r}")

    @property
    def floor(self) -> float:
        """The shortest sleep this policy ever returns (except to land on the deadline)."""
        return max(self.min_delay, min(self.min_interval, self.initial_wait_time))

    def base_delay(self, attempt: int) -> float:
        """The un-jittered delay after poll number `attempt` (1-based), capped."""
        try:
            delay = self.initial_wait_time * self.backoff_factor ** max(0, attempt - 1)
        except OverflowError:
            delay = math.inf
        return min(delay, self.max_interval)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay after poll number `attempt`."""
        base = self.base_delay(attempt)
        spread = self.jitter + self.jitter_ratio * base
        jittered = base + rng.uniform(-spread, spread) if spread else base
        return max(self.floor, jittered)

    def hinted_delay(self, retry_after: float | None, eta_seconds: float | None) -> float | None:
        """The delay a server's hints ask for, within bounds; None when it gave none."""
        if retry_after is not None:
            wanted = retry_after
        elif eta_seconds is not None:
            early = eta_seconds * self.eta_margin
            wanted = eta_seconds if early <= self.eta_tolerance else eta_seconds - early
        else:
            return None
        return min(self.max_hint_interval, max(self.floor, wanted))

    def next_delay(
        self,
        attempt: int,
        remaining: float,
        rng: random.Random,
        *,
        retry_after: float | None = None,
        eta_seconds: float | None = None,
        last_attempt: bool = False,
    ) -> float:
        """Seconds to sleep after poll number `attempt` with `remaining` seconds to the deadline.

        `last_attempt` says only one poll is left (max_attempts): it is kept for the deadline, so
        a job that ends in time is never reported as a timeout.
        """
        if remaining <= 0:
            return self.min_delay
        if last_attempt:
            return max(self.min_delay, remaining)
        hinted = self.hinted_delay(retry_after, eta_seconds)
        delay = self.delay(attempt, rng) if hinted is None else hinted
        return max(self.min_delay, self.clamp_to_deadline(delay, remaining))

    def clamp_to_deadline(self, delay: float, remaining: float) -> float:
        """Sleep to the deadline when the delay would pass it or leave a uselessly short gap."""
        if remaining - delay <= self.initial_wait_time:
            return max(0.0, remaining)
        return delay


class Planner(Protocol):
    """Proposes the next delay of a job still pending `elapsed` seconds after it began (None:
    no opinion, the blind schedule applies). `client.learned.LearnedSchedule` is one."""

    def planned_delay(
        self, policy: BackoffPolicy, elapsed: float, remaining: float, rng: random.Random
    ) -> float | None: ...


def planned_within_bounds(policy: BackoffPolicy, planned: float, remaining: float) -> float:
    """A planner's proposal held to the policy: floor, `max_interval`, a last poll at the
    deadline."""
    delay = min(policy.max_interval, max(policy.floor, planned))
    return max(policy.min_delay, policy.clamp_to_deadline(delay, remaining))


def last_attempt_next(attempts: int, max_attempts: int | None) -> bool:
    """After `attempts` polls, is the next one the last that `max_attempts` allows (the one
    kept for the deadline)?"""
    return max_attempts is not None and attempts + 1 >= max_attempts


def first_poll_delay(
    policy: BackoffPolicy,
    remaining: float,
    rng: random.Random,
    planner: Planner | None = None,
    max_attempts: int | None = None,
) -> float:
    """Seconds to wait before the first poll: none, unless it is the last one allowed (kept
    for the deadline, `remaining` seconds away), or a planner knows that jobs here almost never
    end so soon."""
    if last_attempt_next(0, max_attempts):
        return max(0.0, remaining)
    planned = planner.planned_delay(policy, 0.0, remaining, rng) if planner else None
    return 0.0 if planned is None else planned_within_bounds(policy, planned, remaining)


def next_poll_delay(
    policy: BackoffPolicy,
    seen: Observation,
    attempt: int,
    remaining: float,
    max_attempts: int | None,
    rng: random.Random,
    *,
    planner: Planner | None = None,
    elapsed: float = 0.0,
) -> float | None:
    """After poll number `attempt` saw `seen`: seconds until the next poll, or None to stop.

    None means the job ended (`seen` is terminal) or the time or the attempts are used up
    (a timeout). The one rule both the client and the service's workers follow. A `planner`
    (given the seconds `elapsed` since the job began) steers only plain pending answers: hints,
    transient failures and the last attempt keep the rules above.
    """
    if seen.terminal or remaining <= CLOCK_SLACK:
        return None
    if max_attempts is not None and attempt >= max_attempts:
        return None
    last_attempt = last_attempt_next(attempt, max_attempts)
    plain = seen.status == Status.PENDING and seen.retry_after is None and seen.eta_seconds is None
    if planner is not None and plain and not last_attempt:
        planned = planner.planned_delay(policy, elapsed, remaining, rng)
        if planned is not None:
            return planned_within_bounds(policy, planned, remaining)
    return policy.next_delay(
        attempt,
        remaining,
        rng,
        retry_after=seen.retry_after,
        eta_seconds=seen.eta_seconds,
        last_attempt=last_attempt,
    )
