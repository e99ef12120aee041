"""`VideoTranslationClient` keeps the last attempt `max_attempts` allows for the deadline, the
only attempt of `max_attempts=1` included: it waits for the deadline and sees a job that ended
before it (it used to poll at once and report `timeout` after 0 s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes import VirtualClock, job_ending_at

Start = Callable[..., Any]


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
async def test_a_job_ending_2s_into_a_6s_deadline_completes_whatever_max_attempts(
    upstream: Start, clock: VirtualClock, max_attempts: int
) -> None:
    client, scripted = await upstream(
        job_ending_at(2.0), max_wait_time=6, max_attempts=max_attempts, jitter=0.0
    )
    result = await client.poll()

    assert result.status == "completed", clock.sleeps
    assert result.attempts == len(scripted.request_times) <= max_attempts
    assert scripted.request_times[-1] <= 6.0


async def test_the_one_attempt_is_made_at_the_deadline(
    upstream: Start, clock: VirtualClock
) -> None:
    client, scripted = await upstream(job_ending_at(1e9), max_wait_time=6, max_attempts=1)
    result = await client.poll()

    assert result.status == "timeout" and result.attempts == 1
    assert scripted.request_times == [6.0] and clock.sleeps == [6.0]
    assert [update.next_poll_in for update in result.updates] == [None]
