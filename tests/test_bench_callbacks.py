"""The push-callbacks benchmark (bench/callbacks.py) runs end to end on a few jobs, and the
simulator's `POST /jobs` takes the job id the caller chose (what the benchmark's register-first
flow needs)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.callbacks import QUICK, CallbacksConfig, durations, format_table, run_benchmark
from client.simulator import SimulatorConfig, create_app


async def test_a_job_posted_with_an_id_gets_it_and_an_id_is_taken_once() -> None:
    app = create_app(SimulatorConfig(), lambda: 1000.0)
    async with TestClient(TestServer(app)) as client:
        async with client.post("/jobs", json={"id": "op-7_A", "duration": 5}) as answer:
            assert answer.status == 201
            job = await answer.json()
        assert job["id"] == "op-7_A" and job["status_url"].endswith("/jobs/op-7_A/status")
        async with client.get("/jobs/op-7_A/status") as answer:
            assert answer.status == 200 and (await answer.json()) == {"result": "pending"}
        async with client.post("/jobs", json={"id": "op-7_A", "duration": 1}) as answer:
            assert answer.status == 409
        # A batch with one taken (or repeated) id creates none of its jobs.
        batch = {"jobs": [{"id": "fresh", "duration": 1}, {"id": "fresh", "duration": 1}]}
        async with client.post("/jobs", json=batch) as answer:
            assert answer.status == 409 and "jobs[1].id" in (await answer.json())["detail"]
        async with client.get("/jobs/fresh") as answer:
            assert answer.status == 404
        for bad in ("", "a" * 65, "a/b", "é", 7):
            async with client.post("/jobs", json={"id": bad, "duration": 1}) as answer:
                assert answer.status == 400 and (await answer.json())["detail"].startswith("id:")
        # The simulator's own ids skip one a caller took.
        async with client.post("/jobs", json={"id": "j1", "duration": 1}) as answer:
            assert answer.status == 201
        async with client.post("/jobs", json={"duration": 1}) as answer:
            assert (await answer.json())["id"] == "j2"
        async with client.post("/jobs", json={"id": "default", "duration": 1}) as answer:
            assert answer.status == 409  # GET /status's job


def test_durations_are_seeded_and_log_uniform_within_the_bounds() -> None:
    cfg = CallbacksConfig(jobs=2000)
    drawn = durations(cfg)
    assert drawn == durations(cfg) and drawn != durations(CallbacksConfig(jobs=2000, seed=1))
    assert all(cfg.min_duration <= d <= cfg.max_duration for d in drawn)
    below = sum(d < math.sqrt(cfg.min_duration * cfg.max_duration) for d in drawn)
    assert 0.45 < below / len(drawn) < 0.55  # half below the geometric mean


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_benchmark_runs_on_a_few_jobs() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    report = await run_benchmark(QUICK)
    push, push_default, poll = report.runs
    assert [r.name for r in report.runs] == ["push", "push-default-wait", "poll"]
    for run in report.runs:
        assert run.by_state == {"completed": QUICK.jobs}, format_table(report)
        assert run.attempts_mismatched == 0
    assert push.timeouts == 0 and push.requests_mean <= 2.5
    assert sum(push.pushes.values()) == QUICK.jobs and push.pushes.get("sent", 0) > 0
    sent = push.latency_by_push["sent"]
    assert sent.p95 is not None and sent.p95 < 2.0  # the bar is 0.5 s; a busy test machine
    assert not poll.pushes and poll.latency_by_push.keys() == {"none"}
    assert push_default.requests_mean >= push.requests_mean
    table = format_table(report)
    assert "| push |" in table and "| poll |" in table
    json.dumps(asdict(report))
