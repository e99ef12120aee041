"""The host budget benchmark (bench/hosts.py) runs end to end on a few watches, and its
window arithmetic is right. The bars themselves are the benchmark's, at full size (the tenants
phase's bars hold at this size too: they are the product's, not the load's)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace

import pytest

from bench._proxy import busiest_window, per_second
from bench.hosts import (
    PHASES,
    HostsConfig,
    attempts_for,
    format_table,
    most_in_one_cooldown,
    run_benchmark,
)

TINY = HostsConfig(
    only="budget,breaker",
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
TINY_TENANTS = replace(
    TINY,
    only="tenants",
    flood_watches=100,
    trickle_watches=4,
    trickle_after=2.0,
    trickle_job=2.0,
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


def test_only_names_the_phases_to_run() -> None:
    assert HostsConfig().phases == PHASES == ("budget", "breaker", "tenants")
    assert TINY.phases == ("budget", "breaker")
    assert TINY_TENANTS.phases == ("tenants",)


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


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_tenants_phase_runs_on_a_few_watches() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    report = await run_benchmark(TINY_TENANTS)
    assert report.budget is None and report.breaker is None
    tenants = report.tenants
    assert tenants is not None
    assert tenants.met and all(tenants.met.values()), (tenants.met, format_table(report))
    assert tenants.watches.by_state == {"completed": TINY_TENANTS.trickle_watches}
    assert tenants.flood_pending == TINY_TENANTS.flood_watches  # its jobs outlast the phase
    assert len(tenants.latencies) == TINY_TENANTS.trickle_watches
    assert tenants.latency_max is not None and tenants.latency_max <= 8.0
    assert tenants.busiest_sliding <= tenants.rate_limit + tenants.burst + 2
    # Alone, the flood takes the budget; then the trickle gets requests of its own.
    assert tenants.alone.requests > 0 and tenants.alone.of_host == 1.0
    assert tenants.trickle.requests >= TINY_TENANTS.trickle_watches
    assert tenants.flood.requests + tenants.trickle.requests > 0
    assert tenants.flood.of_host + tenants.trickle.of_host == pytest.approx(1.0)
    assert sum(tenants.trickle_per_second) >= tenants.trickle.requests
    table = format_table(report)
    assert "3. tenants" in table and "1. budget" not in table
    json.dumps(asdict(report))
