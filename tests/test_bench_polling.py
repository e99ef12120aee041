"""The polling benchmark (bench/polling.py) runs and tells the expected story on a few jobs."""

from __future__ import annotations

import json
import re

import pytest

from bench.polling import BenchConfig, StrategyResult, main, run_benchmark

JOBS = 300


@pytest.fixture(scope="module")
def results() -> dict[str, StrategyResult]:
    return {r.strategy: r for r in run_benchmark(BenchConfig(jobs=JOBS, seed=0))}


def test_every_strategy_ran_every_job(results: dict[str, StrategyResult]) -> None:
    assert set(results) == {
        "ours (defaults)",
        "original",
        "fixed 1 s",
        "ours + eta hints (±10 %)",
    }
    for r in results.values():
        assert r.jobs == JOBS
        assert sum(r.statuses.values()) == JOBS
        assert r.mean_requests >= 1


def test_original_reports_false_timeouts(results: dict[str, StrategyResult]) -> None:
    original = results["original"]
    assert original.false_timeout_rate > 0
    assert original.statuses.get("timeout", 0) > 0


def test_ours_never_reports_a_false_timeout(results: dict[str, StrategyResult]) -> None:
    for name in ("ours (defaults)", "fixed 1 s", "ours + eta hints (±10 %)"):
        assert results[name].false_timeout_rate == 0, name
        assert results[name].detected == JOBS, name


def test_eta_hints_save_requests(results: dict[str, StrategyResult]) -> None:
    hints, defaults = results["ours + eta hints (±10 %)"], results["ours (defaults)"]
    assert hints.mean_requests < defaults.mean_requests
    assert hints.latency_p95 is not None and defaults.latency_p95 is not None
    assert hints.latency_p95 < defaults.latency_p95


def test_latencies_are_sane(results: dict[str, StrategyResult]) -> None:
    for r in results.values():
        assert r.latency_p50 is not None and r.latency_p95 is not None
        # Detection costs at least the request that sees `completed`.
        assert r.request_time - 1e-9 <= r.latency_p50 <= r.latency_p95
    fixed = results["fixed 1 s"]
    assert fixed.latency_p95 is not None
    assert fixed.latency_p95 <= 1.0 + 2 * fixed.request_time
    for r in results.values():
        # Our client's last poll starts at the deadline at the latest.
        assert r.overshoot_max <= r.request_time + 1e-6


def test_deterministic_for_a_seed() -> None:
    def strip(rs: list[StrategyResult]) -> list[tuple[object, ...]]:
        return [(r.strategy, r.mean_requests, r.latency_p95, r.statuses) for r in rs]

    config = BenchConfig(jobs=40, seed=3)
    assert strip(run_benchmark(config)) == strip(run_benchmark(config))


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--jobs", "20", "--seed", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["strategy"] for row in rows][:2] == ["ours (defaults)", "original"]
    assert all(row["jobs"] == 20 and row["seed"] == 1 and row["deadline"] == 60 for row in rows)


@pytest.fixture(scope="module")
def lognormal() -> dict[str, StrategyResult]:
    config = BenchConfig(jobs=150, seed=0, deadline=600.0, mix="lognormal", train_jobs=100)
    return {r.strategy: r for r in run_benchmark(config)}


def test_a_mix_runs_the_learned_rows(lognormal: dict[str, StrategyResult]) -> None:
    assert list(lognormal) == ["ours (defaults)", "ours (learned)", "original", "fixed 1 s"]
    for name in ("ours (defaults)", "ours (learned)", "fixed 1 s"):
        assert lognormal[name].false_timeout_rate == 0, name
        assert lognormal[name].detected == 150, name


def test_the_warm_learned_schedule_saves_requests(lognormal: dict[str, StrategyResult]) -> None:
    learned, defaults = lognormal["ours (learned)"], lognormal["ours (defaults)"]
    assert learned.mean_requests < 0.75 * defaults.mean_requests
    assert learned.latency_p95 is not None and defaults.latency_p95 is not None
    assert learned.latency_p95 <= defaults.latency_p95


MIX_ROWS = ["ours (defaults)", "ours (learned)", "original", "fixed 1 s"]


@pytest.mark.parametrize(
    ("mix", "described", "deadline"),
    [
        ("lognormal", "lognormal median", 600),
        ("bimodal", "bimodal", 600),
        ("loguniform", "log-uniform", 60),
    ],
)
def test_cli_mix(
    capsys: pytest.CaptureFixture[str], mix: str, described: str, deadline: int
) -> None:
    assert main(["--jobs", "20", "--train-jobs", "30", "--mix", mix]) == 0
    out = capsys.readouterr().out
    header, blank, columns, *rows = out.strip().splitlines()
    assert f"durations {described}" in header and f"deadline {deadline} s" in header
    assert "learned warmed on 30 jobs" in header
    assert not blank and columns.startswith("strategy")
    # The strategy is the first column (cells are 2+ spaces apart; names hold single spaces).
    assert [re.split(r"\s{2,}", row)[0] for row in rows] == MIX_ROWS
