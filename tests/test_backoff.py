import random

import pytest

from client import BackoffPolicy, ConfigurationError


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
