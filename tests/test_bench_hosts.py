"""The host budget benchmark (bench/hosts.py) runs end to end on a few watches, and its
window arithmetic is right. The bars themselves are the benchmark's, at full size."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest

from bench._proxy import busiest_window, per_second
from bench.hosts import HostsConfig, attempts_for, format_table, most_in_one_cooldown, run_benchmark

TINY = HostsConfig(
    watches=30,
    min_duration=1.0,
    max_duration=3.0,
    outage_watches=10,
    outage_job=6.0,
    outage_interval=0.5,
    outage_after=1.5,
    outage=3.0,
    cooldown=1.0,
    timeout=30.0,
)


def test_busiest_window_fixed_and_sliding() -> None:
    times = [0.0, 0.5, 0.9, 1.1, 1.2, 1.3, 2.05]
    # Fixed windows [0, 1), [1, 2), [2, 3): 3, 3, 1; any second: 0.9-1.3 holds 4... and
    # 0.5-1.3 holds 5 (1.3 - 0.5 < 1).
    assert busiest_window(times) == (3, 5)
    assert busiest_window([]) == (0, 0)
    assert per_second(times) == [3, 3, 1]


def test_requests_a_cooldown_apart_are_one_per_cooldown() -> None:
    assert most_in_one_cooldown([0.0, 1.0, 2.0], 1.0) == 1
    assert most_in_one_cooldown([0.0, 0.98, 2.0], 1.0) == 1  # 5 % slack for timing noise
    assert most_in_one_cooldown([0.0, 0.5, 2.0], 1.0) == 2


def test_max_attempts_would_run_out_on_the_schedule_alone() -> None:
    max_attempts, naive = attempts_for(HostsConfig())
    assert max_attempts < naive


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_benchmark_runs_on_a_few_watches() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    report = await run_benchmark(TINY)
    budget, breaker = report.budget, report.breaker
    assert budget is not None and breaker is not None
    assert budget.watches.total == TINY.watches and budget.watches.wrong_state == 0
    assert budget.requests >= TINY.watches and budget.watches.attempts_mismatched == 0
    assert breaker.watches.total == TINY.outage_watches and breaker.watches.wrong_state == 0
    assert breaker.opened_after is not None, "the breaker never opened"
    assert breaker.watches.out_of_attempts == 0
    table = format_table(report)
    assert "1. budget" in table and "2. breaker" in table
    json.dumps(asdict(report))
