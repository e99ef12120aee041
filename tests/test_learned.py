"""Learned schedules: the histogram, the planner's bounds and fallbacks, persistence, and the
client learning across polls."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from client import (
    BackoffPolicy,
    ConfigurationError,
    DurationHistogram,
    LearnedSchedule,
    Observation,
    ScheduleHistory,
    Status,
    upstream_key,
)
from client.backoff import first_poll_delay, next_poll_delay
from client.learned import BIN_COUNT, HALF_LIFE, MIN_SAMPLES
from tests.fakes import VirtualClock, job_ending_at

PENDING = Observation(Status.PENDING, 200)
URL = "http://translate-1:5000/jobs/j17/status"


def trained(durations: list[float], half_life: float = 1e9) -> DurationHistogram:
    histogram = DurationHistogram(half_life)
    for seconds in durations:
        histogram.add(seconds, seconds)
    return histogram


def decayed(samples: int) -> float:
    """The weight of `samples` samples under the default half-life."""
    return sum(2 ** (-k / HALF_LIFE) for k in range(samples))


def lognormal(count: int, median: float = 30.0, sigma: float = 0.6, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, sigma)) for _ in range(count)]


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://Translate-1:5000/jobs/j17/status?x=1", "translate-1:5000/jobs/{id}/status"),
        ("https://t.example./v2/jobs/123/status", "t.example/v2/jobs/{id}/status"),
        (
            "http://h/api/tasks/3f2a1c9e-0d6b-4c1e-9a57-2b8e6f0a1d44/state",
            "h/api/tasks/{id}/state",
        ),
        ("http://h/status", "h/status"),
        ("http://h/jobs/deadbeefcafe/status", "h/jobs/{id}/status"),
    ],
)
def test_upstream_key_is_host_and_path_template(url: str, key: str) -> None:
    assert upstream_key(url) == key


def test_jobs_of_one_endpoint_share_a_key() -> None:
    assert upstream_key(URL) == upstream_key("http://translate-1:5000/jobs/j18/status")
    assert upstream_key(URL) != upstream_key("http://translate-2:5000/jobs/j17/status")


def test_quantiles_follow_the_samples() -> None:
    histogram = trained(lognormal(5000))
    assert histogram.samples == pytest.approx(5000, rel=1e-3)
    assert histogram.quantile(0.5) == pytest.approx(30.0, rel=0.05)
    assert histogram.quantile(0.95) == pytest.approx(30 * math.exp(0.6 * 1.645), rel=0.05)
    assert DurationHistogram().quantile(0.5) == 0.0


def test_an_interval_spreads_one_sample_over_it() -> None:
    histogram = DurationHistogram()
    histogram.add(10.0, 20.0)
    assert histogram.samples == pytest.approx(1.0)
    assert histogram.ended_by(10.0) == pytest.approx(0.0, abs=0.05)  # bins are ~9 % wide
    assert histogram.ended_by(15.0) == pytest.approx(0.5, abs=0.05)
    assert histogram.ended_by(20.0) == pytest.approx(1.0, abs=0.05)
    histogram.add(1e12, 1e12)  # beyond the last edge: counted there, not lost
    assert histogram.samples == pytest.approx(2.0, rel=0.01)
    with pytest.raises(ValueError):
        histogram.add(1.0, math.inf)


def test_decay_follows_a_change_and_bounds_the_weight() -> None:
    histogram = DurationHistogram(half_life=50)
    for seconds in [10.0] * 400:
        histogram.add(seconds, seconds)
    assert histogram.quantile(0.5) == pytest.approx(10.0, rel=0.1)
    limit = 1 / (1 - 2 ** (-1 / 50))
    assert histogram.samples <= limit + 1e-6
    for seconds in [100.0] * 100:
        histogram.add(seconds, seconds)
    # After two half-lives three quarters of the weight is new.
    assert histogram.ended_by(50.0) / histogram.samples == pytest.approx(0.25, abs=0.02)
    assert histogram.quantile(0.5) == pytest.approx(100.0, rel=0.1)


def test_merged_adds_the_weights() -> None:
    a, b = trained([5.0] * 10), trained([50.0] * 30)
    merged = a.merged(b)
    assert merged.samples == pytest.approx(40)
    assert merged.ended_by(6.0) == pytest.approx(10)


def test_too_few_samples_propose_nothing() -> None:
    schedule = LearnedSchedule(trained([30.0] * (int(MIN_SAMPLES) - 1)))
    assert not schedule.trained
    assert schedule.planned_delay(BackoffPolicy(), 0.0, 600, random.Random(0)) is None


def blind_and_planned(seen: Observation, attempt: int = 2, **kwargs: Any) -> tuple[Any, Any]:
    policy, schedule = BackoffPolicy(), LearnedSchedule(trained(lognormal(500)))
    blind = next_poll_delay(policy, seen, attempt, 500, None, random.Random(1), **kwargs)
    planned = next_poll_delay(
        policy, seen, attempt, 500, None, random.Random(1), planner=schedule, elapsed=3.0, **kwargs
    )
    return blind, planned


@pytest.mark.parametrize(
    "seen",
    [
        Observation(Status.PENDING, 200, eta_seconds=40.0),
        Observation(Status.PENDING, 200, retry_after=7.0),
        Observation(None, 503, "HTTP 503"),  # a transient failure: back off as usual
        Observation(None, 429, "HTTP 429", retry_after=2.0),
    ],
)
def test_hints_and_failures_keep_the_current_rules(seen: Observation) -> None:
    blind, planned = blind_and_planned(seen)
    assert planned == blind


def test_the_last_attempt_is_kept_for_the_deadline() -> None:
    policy, schedule = BackoffPolicy(), LearnedSchedule(trained(lognormal(500)))
    rng = random.Random(0)
    delay = next_poll_delay(policy, PENDING, 4, 500, 5, rng, planner=schedule, elapsed=3.0)
    assert delay == 500


def test_polls_skip_the_early_times_and_crowd_where_jobs_end() -> None:
    schedule, policy = LearnedSchedule(trained(lognormal(2000))), BackoffPolicy()
    rng = random.Random(0)
    # Hardly any job ends within 10 s: wait the whole max_interval (less <= 10 % jitter).
    assert 9.0 <= first_poll_delay(policy, 600, rng, schedule) <= 10.0
    early = schedule.planned_delay(policy, 3.0, 600, rng)
    peak = schedule.planned_delay(policy, 30.0, 600, rng)
    assert early is not None and peak is not None and peak < early
    assert schedule.planned_delay(policy, 10_000, 600, rng) is None  # an outlier: go blind
    assert first_poll_delay(policy, 600, rng, None) == 0.0


@pytest.mark.parametrize("seed", range(40))
def test_every_delay_is_within_the_policy_bounds(seed: int) -> None:
    rng = random.Random(seed)
    policy = BackoffPolicy(
        initial_wait_time=rng.choice([0.1, 1.0, 5.0]),
        max_interval=rng.choice([0.5, 10.0, 60.0]),
        min_delay=rng.choice([0.0, 1.0]),
    )
    median = rng.choice([0.05, 2.0, 30.0, 3000.0])
    schedule = LearnedSchedule(trained(lognormal(200, median, rng.uniform(0, 1.5), seed)))
    remaining = rng.uniform(0.01, 700)
    first = first_poll_delay(policy, remaining, rng, schedule)
    assert first == 0.0 or policy.floor <= first <= max(
        policy.max_interval, policy.floor, remaining
    )
    for _ in range(50):
        elapsed, left = rng.uniform(0, 5 * median), rng.uniform(0.01, 700)
        planned = schedule.planned_delay(policy, elapsed, left, random.Random(seed))
        delay = next_poll_delay(
            policy, PENDING, 2, left, None, random.Random(seed), planner=schedule, elapsed=elapsed
        )
        if planned is None:  # an outlier job: the blind rule, jitter after its cap included
            continue
        assert delay is not None and delay >= policy.min_delay
        if delay < left - 1e-9:  # not the last sleep, to the deadline
            # The floor wins over a smaller max_interval (it is the service's hard minimum).
            assert policy.floor <= delay <= max(policy.max_interval, policy.floor)
            assert left - delay > policy.initial_wait_time  # no uselessly short last gap
        else:
            assert delay == pytest.approx(max(left, policy.min_delay))


def test_histogram_round_trip_is_compact() -> None:
    histogram = trained(lognormal(300), half_life=100)
    data = histogram.to_dict()
    assert len(json.dumps(data)) < 1500
    again = DurationHistogram.from_dict(json.loads(json.dumps(data)), half_life=100)
    assert again.weights == pytest.approx(histogram.weights, rel=1e-5, abs=1e-4)


def test_history_round_trip_keeps_the_schedule() -> None:
    history = ScheduleHistory()
    for seconds in lognormal(100):
        history.record(URL, seconds - 1, seconds)
    history.record("http://other:1/status", 2.0, 3.0)
    again = ScheduleHistory.from_json(history.to_json())
    assert len(again) == 2
    schedule, restored = history.schedule(URL), again.schedule(URL)
    assert schedule is not None and restored is not None
    policy = BackoffPolicy()
    assert restored.planned_delay(policy, 20, 600, random.Random(3)) == pytest.approx(
        schedule.planned_delay(policy, 20, 600, random.Random(3)), rel=1e-4
    )
    assert again.schedule("http://other:1/status") is None  # one sample: not trained


def test_history_keeps_at_most_max_upstreams() -> None:
    history = ScheduleHistory(max_upstreams=2)
    for host in ("a", "b", "c"):
        history.record(f"http://{host}/status", 1.0, 2.0)
    assert len(history) == 2 and history.durations("http://a/status") is None


GOOD_HISTOGRAM = {"v": 1, "w": {"40": 2.5}}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"v": 1}',
        '{"v": 2, "upstreams": {}}',
        '{"v": 1, "upstreams": []}',
        '{"v": 1, "upstreams": {}, "extra": 0}',
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 9, "w": {}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": []}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {str(BIN_COUNT): 1}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"-1": 1}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"²": 1}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": -1}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": "1"}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": True}}}}),
        json.dumps({"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": 1e300}}}}),
        '{"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": NaN}}}}',
        '{"v": 1, "upstreams": {"h/status": {"v": 1, "w": {"4": Infinity}}}}',
        json.dumps({"v": 1, "upstreams": {"x" * 600: GOOD_HISTOGRAM}}),
        json.dumps({"v": 1, "upstreams": {f"h{i}/s": GOOD_HISTOGRAM for i in range(300)}}),
        "[" * 100_000,
    ],
)
def test_garbage_in_a_persisted_history_is_rejected(text: str) -> None:
    with pytest.raises(ConfigurationError):
        ScheduleHistory.from_json(text)


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ConfigurationError):
        DurationHistogram(half_life=0)
    with pytest.raises(ConfigurationError):
        ScheduleHistory(max_upstreams=0)


# --- the client learning across polls -------------------------------------------------------


async def test_the_client_learns_across_polls_and_then_skips_early_polls(
    upstream: Any, clock: VirtualClock
) -> None:
    history = ScheduleHistory()
    client, scripted = await upstream(job_ending_at(30.0), history=history, max_attempts=None)
    attempts = []
    polls = int(MIN_SAMPLES) + 5  # decayed, 20 effective samples take 22 jobs
    for _ in range(polls):
        clock.now, clock.sleeps = 0.0, []
        result = await client.poll()
        assert result.status == "completed" and result.elapsed <= 30.0 + 10.0
        attempts.append(result.attempts)
    durations = history.durations(client.status_url)
    assert durations is not None and durations.samples == pytest.approx(decayed(polls))
    assert attempts[0] == 7  # the blind schedule: 0, 1, 3, 7, 15, 25, 35 s
    assert attempts[-1] == 4  # then about 10, 19, 28 and 32 s
    assert clock.sleeps[0] >= 9.0  # no poll at 0 s: jobs here never end that soon
    assert all(s <= 10.0 for s in clock.sleeps)
    assert scripted.request_times


async def test_not_adaptive_records_but_keeps_the_blind_schedule(
    upstream: Any, clock: VirtualClock
) -> None:
    history = ScheduleHistory()
    client, _ = await upstream(
        job_ending_at(30.0), history=history, adaptive=False, rng=random.Random(5)
    )
    for seconds in lognormal(50):
        history.record(client.status_url, seconds, seconds)
    assert history.schedule(client.status_url) is not None
    blind, _ = await upstream(job_ending_at(30.0), rng=random.Random(5))
    await client.poll()
    learned_sleeps, clock.now, clock.sleeps = clock.sleeps, 0.0, []
    await blind.poll()
    assert learned_sleeps == clock.sleeps
    durations = history.durations(client.status_url)
    assert durations is not None and durations.samples == pytest.approx(decayed(51))
