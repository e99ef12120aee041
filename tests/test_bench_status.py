"""The status benchmark (bench/status.py) runs end to end at tiny sizes and reports every figure
of docs/scale.md's latency table as a positive, finite number. The figures themselves are the
benchmark's, at full size."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import pytest

from bench._lateness import percentile
from bench.status import StatusConfig, format_table, parse_args, run_benchmark

TINY = StatusConfig(
    partitions=(1, 3),
    calls=5,
    warmup=1,
    per_partition=2,
    page=4,
    register_partitions=3,
    registrations=5,
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 301)]
    assert percentile(values, 50) == 150.0
    assert percentile(values, 99) == 297.0
    assert percentile([7.0], 99) == 7.0


def test_the_defaults_are_the_documented_table() -> None:
    args = parse_args([])
    assert args.partitions == (1, 12, 64) and args.calls == 300 and args.registrations == 500
    assert args.per_partition == 10 and args.page == 50 and args.register_partitions == 12
    assert parse_args(["--partitions", "1,4", "--json"]).partitions == (1, 4)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_benchmark_runs_at_tiny_sizes() -> None:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"bench/status.py needs {' and '.join(missing)} on PATH")
    report = await run_benchmark(TINY)
    shape = [(f.what, f.target, f.partitions) for f in report.figures]
    assert shape == [
        ("counts", "one Redis", 1),
        ("counts", "cluster", 1),
        ("page", "cluster", 1),
        ("counts", "cluster", 3),
        ("page", "cluster", 3),
        ("register", "cluster", 3),
        ("register+wait", "cluster", 3),
    ]
    for f in report.figures:
        assert f.calls == (TINY.registrations if f.what.startswith("register") else TINY.calls)
        for value in (f.median_ms, f.p99_ms, f.max_ms):
            assert math.isfinite(value) and value > 0, f
        assert f.median_ms <= f.p99_ms <= f.max_ms, f
    pages = {f.partitions: f.items for f in report.figures if f.what == "page"}
    assert pages == {1: 2, 3: 4}  # min(page, P x per_partition)
    assert report.waits == TINY.registrations and 0 <= report.waits_short <= report.waits
    assert math.isfinite(report.replicas_online_after) and report.replicas_online_after >= 0
    table = format_table(report)
    assert "tenant counts" in table and "with WAIT 1" in table and "WAITs short" in table
    json.dumps(asdict(report))
