import math
import random

import pytest

from client import BackoffPolicy, ConfigurationError
from client.backoff import first_poll_delay, next_poll_delay
from client.upstream import Observation, Status


def test_delays_without_jitter_grow_geometrically_up_to_the_cap() -> None:
    policy = BackoffPolicy(jitter=0.0, max_interval=10.0)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_seeded_jitter_gives_an_exact_sequence() -> None:
    policy = BackoffPolicy()  # 1 s, x2, ±0.5 s, cap 10 s
    rng = random.Random(42)
    delays = [round(policy.delay(n, rng), 6) for n in range(1, 7)]
    assert delays == [1.139427, 1.525011, 3.775029, 7.723211, 10.236471, 10.176699]


def test_proportional_jitter_scales_with_the_delay() -> None:
    policy = BackoffPolicy(jitter=0.0, jitter_ratio=0.2, max_interval=100.0)
    rng = random.Random(1)
    for attempt in range(1, 8):
        base = policy.base_delay(attempt)
        assert 0.8 * base <= policy.delay(attempt, rng) <= 1.2 * base


def test_jitter_never_drives_a_delay_below_the_floor() -> None:
    policy = BackoffPolicy(initial_wait_time=0.1, jitter=5.0)
    rng = random.Random(3)
    assert min(policy.delay(1, rng) for _ in range(1000)) >= policy.floor == 0.1


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert BackoffPolicy(jitter=0).delay(10_000, random.Random(0)) == 10.0


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(100.0, 8.0), (9.5, 8.0), (9.0, 9.0), (8.5, 8.5), (0.3, 0.3), (0.0, 0.0)],
)
def test_a_sleep_that_would_pass_or_nearly_reach_the_deadline_lands_on_it(
    remaining: float, expected: float
) -> None:
    policy = BackoffPolicy(jitter=0.0)
    assert policy.next_delay(4, remaining, random.Random(0)) == expected


def test_the_last_attempt_is_kept_for_the_deadline() -> None:
    policy = BackoffPolicy(jitter=0.0)
    assert policy.next_delay(1, 42.0, random.Random(0), last_attempt=True) == 42.0


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (0.0, 0.25), (10_000.0, 600.0)])
def test_retry_after_is_honoured_within_bounds(retry_after: float, expected: float) -> None:
    policy = BackoffPolicy()
    assert policy.next_delay(1, 5000.0, random.Random(0), retry_after=retry_after) == expected


def test_retry_after_never_passes_the_deadline() -> None:
    assert BackoffPolicy().next_delay(1, 30.0, random.Random(0), retry_after=300) == 30.0


@pytest.mark.parametrize(
    ("eta", "expected"), [(100.0, 88.0), (4.0, 4.0), (0.01, 0.25), (None, 1.0)]
)
def test_eta_hints_aim_early_while_far_and_right_at_it_when_close(
    eta: float | None, expected: float
) -> None:
    policy = BackoffPolicy(jitter=0.0)
    assert policy.next_delay(1, 5000.0, random.Random(0), eta_seconds=eta) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_wait_time": 0},
        {"backoff_factor": 0.5},
        {"jitter": -1},
        {"max_interval": float("nan")},
        {"jitter_ratio": 2},
    ],
)
def test_out_of_range_parameters_are_refused_with_their_name(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        BackoffPolicy(**kwargs)


# -- the last attempt allowed is kept for the deadline, the only one included ----------------


def waits(max_attempts: int | None, max_wait: float, ends_at: float = math.inf) -> list[float]:
    """The sleeps before each poll of a job ending at `ends_at` (requests take no time, no
    jitter): what `first_poll_delay` and `next_poll_delay` plan for client and worker alike."""
    policy, rng = BackoffPolicy(jitter=0.0), random.Random(0)
    now = first_poll_delay(policy, max_wait, rng, max_attempts=max_attempts)
    slept, attempt = [now], 0
    while True:
        attempt += 1
        seen = Observation(Status.COMPLETED if now >= ends_at else Status.PENDING, 200)
        delay = next_poll_delay(policy, seen, attempt, max_wait - now, max_attempts, rng)
        if delay is None:
            return slept
        slept.append(delay)
        now += delay


@pytest.mark.parametrize(
    ("max_attempts", "expected"),
    [
        (1, [6.0]),  # the one poll is the last: at the deadline
        (2, [0.0, 6.0]),
        (3, [0.0, 1.0, 5.0]),
        (4, [0.0, 1.0, 2.0, 3.0]),
        (5, [0.0, 1.0, 2.0, 3.0]),  # the deadline comes first (the Smithy rule)
        (None, [0.0, 1.0, 2.0, 3.0]),
    ],
)
def test_the_last_attempt_allowed_is_made_at_the_deadline(
    max_attempts: int | None, expected: list[float]
) -> None:
    assert waits(max_attempts, 6.0) == expected


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_a_job_ending_before_the_deadline_is_seen_whatever_max_attempts(max_attempts: int) -> None:
    """A job completing 2 s into a 6 s deadline: the last poll allowed sees it."""
    slept = waits(max_attempts, 6.0, ends_at=2.0)
    assert sum(slept) >= 2.0 and len(slept) <= max_attempts


def test_the_first_poll_waits_only_when_it_is_the_last_one() -> None:
    policy, rng = BackoffPolicy(), random.Random(0)
    assert first_poll_delay(policy, 42.0, rng, max_attempts=1) == 42.0
    assert first_poll_delay(policy, 42.0, rng, max_attempts=2) == 0.0
    assert first_poll_delay(policy, 42.0, rng) == 0.0
    assert first_poll_delay(policy, 0.0, rng, max_attempts=1) == 0.0
