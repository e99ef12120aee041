"""VideoTranslationClient against a scripted upstream on loopback, on a virtual clock."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest

from client import Observation, Status, StatusUpdate, VideoTranslationClient
from tests.fakes import Reply, VirtualClock, job_ending_at

Start = Any


async def test_returns_completed_and_compares_equal_to_the_string(upstream: Start) -> None:
    client, _ = await upstream(job_ending_at(2.5))
    assert await client.get_status() == "completed"


async def test_returns_error_reported_by_the_upstream(upstream: Start) -> None:
    client, _ = await upstream(job_ending_at(2.5, "error"))
    assert await client.get_status() is Status.ERROR


async def test_sleeps_follow_the_seeded_schedule(upstream: Start, clock: VirtualClock) -> None:
    client, scripted = await upstream(job_ending_at(20.0), rng=random.Random(42))
    result = await client.poll()
    assert result.status == "completed"
    assert [round(s, 6) for s in clock.sleeps] == [
        1.139427,
        1.525011,
        3.775029,
        7.723211,
        10.236471,
    ]
    assert result.attempts == len(scripted.request_times) == 6


@pytest.mark.parametrize("end", [round(random.Random(7).uniform(0, 59.99), 3) for _ in range(60)])
async def test_a_job_ending_before_the_deadline_is_never_a_timeout(
    upstream: Start, clock: VirtualClock, end: float
) -> None:
    client, _ = await upstream(job_ending_at(end), request_time=0.05, rng=random.Random(end))
    result = await client.poll()
    assert result.status == "completed", (end, clock.sleeps)
    assert result.elapsed <= 60 + 0.05


@pytest.mark.parametrize("end", [0.5, 30.0, 59.0, 59.99])
async def test_a_job_ending_just_before_the_deadline_is_caught_at_it(
    upstream: Start, clock: VirtualClock, end: float
) -> None:
    client, _ = await upstream(job_ending_at(end), max_attempts=3)
    assert await client.get_status() == "completed"


async def test_a_job_that_never_ends_times_out_within_one_request_of_the_deadline(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(1e9), request_time=3.0, max_attempts=None)
    result = await client.poll()
    assert result.status == "timeout"
    assert 60 <= result.elapsed <= 60 + 3.0
    assert scripted.request_times[-1] - 3.0 <= 60.0  # the last poll started by the deadline


@pytest.mark.parametrize("max_attempts", [1, 2, 5, 10])
async def test_max_attempts_bounds_the_requests(upstream: Start, max_attempts: int) -> None:
    client, scripted = await upstream(job_ending_at(1e9), max_attempts=max_attempts)
    result = await client.poll()
    assert result.status == "timeout"
    assert result.attempts == len(scripted.request_times) == max_attempts
    if max_attempts > 1:
        assert scripted.request_times[-1] == pytest.approx(60.0)  # the last one at the deadline


def failing(reply: Reply, until: float) -> Any:
    def answer(now: float) -> Reply:
        return reply if now < until else (200, {"result": "completed"}, {})

    return answer


@pytest.mark.parametrize(
    "reply",
    [
        (503, {"detail": "busy"}, {}),
        (500, "oops", {}),
        (429, "", {}),
        (200, "<html>not json</html>", {}),
        (200, {"result": "weird"}, {}),
    ],
    ids=["503", "500", "429", "html", "unknown-result"],
)
async def test_transient_failures_back_off_and_are_counted(
    upstream: Start, clock: VirtualClock, reply: Reply
) -> None:
    client, _scripted = await upstream(failing(reply, until=10.0), jitter=0.0)
    updates: list[StatusUpdate] = []
    result = await client.poll(on_update=updates.append)
    assert result.status == "completed"
    assert clock.sleeps == [1, 2, 4, 8]  # the normal backoff: no hot loop
    assert [u.error is not None for u in updates] == [True] * 4 + [False]
    assert result.last_error is not None and result.attempts == 5
    assert [str(u) for u in updates] == ["pending"] * 4 + ["completed"]


async def test_connection_errors_back_off_until_the_deadline(clock: VirtualClock) -> None:
    client = VideoTranslationClient(
        "http://127.0.0.1:9", clock=clock, sleep=clock.sleep, max_wait_time=20
    )
    result = await client.poll()
    assert result.status == "timeout"
    assert min(clock.sleeps) >= 0.5 and sum(clock.sleeps) == pytest.approx(20.0)
    assert result.attempts == len(clock.sleeps) + 1 <= 7
    assert result.last_error and "Connect" in result.last_error


@pytest.mark.parametrize("code", [404, 410, 400])
async def test_404_and_other_4xx_give_error_at_once(upstream: Start, code: int) -> None:
    client, _scripted = await upstream(lambda now: (code, {"detail": "nope"}, {}))
    result = await client.poll()
    assert result.status == "error" and result.attempts == 1
    assert result.last_error and str(code) in result.last_error


async def test_retry_after_is_honoured(upstream: Start, clock: VirtualClock) -> None:
    client, _ = await upstream(failing((429, "", {"Retry-After": "7"}), until=5.0))
    assert await client.get_status() == "completed"
    assert clock.sleeps == [7.0]


async def test_retry_after_on_pending_can_make_us_poll_sooner_but_not_in_a_loop(
    upstream: Start, clock: VirtualClock
) -> None:
    def answer(now: float) -> Reply:
        return 200, {"result": "pending" if now < 3 else "completed"}, {"Retry-After": "0"}

    client, _ = await upstream(answer, max_attempts=None)
    assert await client.get_status() == "completed"
    assert set(clock.sleeps) == {0.25}


async def test_eta_hints_cut_requests_and_latency(upstream: Start, clock: VirtualClock) -> None:
    end = 40.0

    def answer(now: float) -> Reply:
        if now >= end:
            return 200, {"result": "completed"}, {}
        return 200, {"result": "pending", "progress": 100 * now / end, "eta_seconds": end - now}, {}

    client, scripted = await upstream(answer)
    result = await client.poll()
    assert result.status == "completed"
    assert len(scripted.request_times) <= 4
    assert scripted.request_times[-1] - end <= 0.5
    assert result.updates[0].progress == 0 and result.updates[0].eta_seconds == 40


async def test_sync_and_async_callbacks_see_every_update(
    upstream: Start, clock: VirtualClock
) -> None:
    client, _ = await upstream(job_ending_at(2.5), jitter=0.0)
    seen_sync: list[str] = []
    seen_async: list[str] = []

    async def async_callback(update: StatusUpdate) -> None:
        seen_async.append(update)

    assert await client.get_status(on_update=seen_sync.append) == "completed"
    clock.now = 0.0
    client2, _ = await upstream(job_ending_at(2.5), jitter=0.0)
    assert await client2.get_status(on_update=async_callback) == "completed"
    assert seen_sync == seen_async == ["pending", "pending", "completed"]


async def test_updates_carry_attempt_and_timing(upstream: Start) -> None:
    client, _ = await upstream(job_ending_at(2.5), jitter=0.0, request_time=0.05)
    result = await client.poll()
    assert [u.attempt for u in result.updates] == [1, 2, 3]
    assert [u.next_poll_in for u in result.updates] == [1.0, 2.0, None]
    assert result.updates[-1].elapsed == pytest.approx(3.15)


async def test_async_with_closes_its_own_session(upstream: Start) -> None:
    client, _ = await upstream(job_ending_at(0.0))
    async with client:
        session = client._owned_session
        assert session is not None
        assert await client.get_status() == "completed"
    assert session.closed and client._owned_session is None


async def test_an_injected_session_is_used_and_left_open(upstream: Start, clock: Any) -> None:
    probe, _ = await upstream(job_ending_at(0.0))
    async with aiohttp.ClientSession() as session:
        client = VideoTranslationClient(probe.base_url, session=session, clock=clock)
        async with client:
            assert await client.get_status() == "completed"
        assert not session.closed


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"max_wait_time": 0}, {"backoff_factor": 0.1}]
)
def test_bad_parameters_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        VideoTranslationClient("http://127.0.0.1:5000", **kwargs)


async def test_check_makes_one_request_and_does_not_wait(
    upstream: Start, clock: VirtualClock
) -> None:
    def answer(now: float) -> Reply:
        return 200, {"result": "pending", "progress": 40, "eta_seconds": 12}, {}

    client, scripted = await upstream(answer)
    seen = await client.check()
    assert (seen.status, seen.progress, seen.eta_seconds) == ("pending", 40.0, 12.0)
    assert len(scripted.request_times) == 1 and clock.sleeps == []


# Time in on_update (issue 8, item 8): it counts against the schedule and the deadline.


def slow_callback(clock: VirtualClock, seconds: float) -> Any:
    def on_update(update: StatusUpdate) -> None:
        clock.now += seconds

    return on_update


async def test_a_slow_callback_never_pushes_a_request_past_the_deadline(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(1e9), max_wait_time=3, jitter=0.0)
    result = await client.poll(on_update=slow_callback(clock, 1.0))
    assert result.status == "timeout"
    assert scripted.request_times == [0.0, 1.0, 3.0]
    assert result.elapsed == 4.0  # the last callback's second included


@pytest.mark.parametrize("seed", range(20))
async def test_with_jitter_a_slow_callback_keeps_every_request_within_the_deadline(
    upstream: Start, clock: VirtualClock, seed: int
) -> None:
    client, scripted = await upstream(
        job_ending_at(1e9), request_time=0.05, max_wait_time=3, rng=random.Random(seed)
    )
    assert await client.get_status(on_update=slow_callback(clock, 1.0)) == "timeout"
    starts = [t - 0.05 for t in scripted.request_times]
    assert all(0.0 <= t <= 3.0 + 1e-9 for t in starts), starts


async def test_next_poll_in_is_when_the_next_request_goes_out_despite_the_callback(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(6.5), jitter=0.0)
    updates: list[StatusUpdate] = []

    def on_update(update: StatusUpdate) -> None:
        updates.append(update)
        clock.now += 0.3

    assert await client.get_status(on_update=on_update) == "completed"
    assert scripted.request_times == pytest.approx([0.0, 1.0, 3.0, 7.0])
    due = [u.elapsed + u.next_poll_in for u in updates if u.next_poll_in is not None]
    assert due == pytest.approx(scripted.request_times[1:])


async def test_a_callback_past_the_deadline_ends_with_timeout_and_no_more_requests(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(1e9), max_wait_time=3)
    assert await client.get_status(on_update=slow_callback(clock, 5.0)) == "timeout"
    assert scripted.request_times == [0.0]


async def test_a_terminal_status_stands_however_long_the_callback(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(0.0), max_wait_time=3)
    assert await client.get_status(on_update=slow_callback(clock, 5.0)) == "completed"
    assert scripted.request_times == [0.0]


async def test_updates_keep_only_the_latest_in_a_long_poll(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def pending(*args: object, **kwargs: object) -> Observation:
        return Observation(Status.PENDING, 200)

    monkeypatch.setattr("client.polling.fetch_status", pending)
    seen = 0

    def count(update: StatusUpdate) -> None:
        nonlocal seen
        seen += 1

    poller = VideoTranslationClient(
        "http://127.0.0.1:9",
        max_attempts=10_000,
        max_wait_time=1e6,
        initial_wait_time=0.05,
        max_interval=0.05,
        jitter=0.0,
        clock=clock,
        sleep=clock.sleep,
    )
    result = await poller.poll(on_update=count)
    assert result.status == "timeout" and result.attempts == seen == 10_000
    assert len(result.updates) == 100
    assert [u.attempt for u in result.updates] == list(range(9_901, 10_001))
