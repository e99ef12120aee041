"""The upstream simulator: protocol, job API, faults, hints, counters and CLI flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from client.simulator import SimulatorConfig, add_arguments, config_from_args, create_app
from client.workload import DurationMix

Client = TestClient[web.Request, web.Application]


class Clock:
    """A virtual monotonic clock the tests advance by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def serve(clock: Callable[[], float] | None = None, **config: Any) -> AsyncIterator[Client]:
    app = create_app(SimulatorConfig(**config), clock or Clock())
    async with TestClient(TestServer(app)) as client:
        yield client


async def get_json(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.get(path, **kwargs) as response:
        return response.status, await response.json()


async def post_json(client: Client, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body) as response:
        return response.status, await response.json()


async def result(client: Client, path: str = "/status") -> str:
    status, body = await get_json(client, path)
    assert status == 200
    return str(body["result"])


async def test_default_job_pending_then_completed() -> None:
    clock = Clock()
    async with serve(clock, delay=10.0) as client:
        assert await result(client) == "pending"
        clock.advance(9.9)
        assert await result(client) == "pending"
        clock.advance(0.1)
        assert await result(client) == "completed"
        assert await result(client) == "completed"


async def test_default_job_error_outcome() -> None:
    clock = Clock()
    async with serve(clock, delay=1.0, outcome="error") as client:
        assert await result(client) == "pending"
        clock.advance(1.0)
        assert await result(client) == "error"


async def test_default_delay_is_random_between_5_and_15_seconds() -> None:
    async with serve() as client:
        _, details = await get_json(client, "/jobs/default")
        assert 5.0 <= details["duration"] <= 15.0


async def test_seed_makes_default_job_and_faults_deterministic() -> None:
    async def run(seed: int) -> tuple[float, str, list[int]]:
        async with serve(seed=seed, outcome="random", error_rate=0.5, fail_rate=0.5) as client:
            _, details = await get_json(client, "/jobs/default")
            codes = []
            for _ in range(40):
                async with client.get("/status") as response:
                    codes.append(response.status)
            return details["duration"], details["outcome"], codes

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first != other
    assert {200, 503} == set(first[2])


async def test_create_one_job_and_poll_its_status_url() -> None:
    clock = Clock()
    async with serve(clock) as client:
        status, job = await post_json(client, "/jobs", {"duration": 5, "outcome": "error"})
        assert status == 201
        assert job["duration"] == 5 and job["outcome"] == "error"
        url = f"http://{client.host}:{client.port}/jobs/{job['id']}/status"
        assert job["status_url"] == url
        async with client.session.get(url) as response:
            assert (await response.json())["result"] == "pending"
        clock.advance(5)
        assert await result(client, f"/jobs/{job['id']}/status") == "error"
        clock.advance(1)
        assert await result(client, f"/jobs/{job['id']}/status") == "error"
        _, details = await get_json(client, f"/jobs/{job['id']}")
        assert details["requests"] == 3
        assert details["max_concurrent"] == 1
        assert details["first_request_at"] == 1000.0
        assert details["completed_noticed_at"] == 1005.0
        assert details["ends_at"] == 1005.0


async def test_create_a_batch_of_jobs() -> None:
    async with serve() as client:
        specs = [{"duration": i % 3, "outcome": "completed"} for i in range(1000)]
        status, body = await post_json(client, "/jobs", {"jobs": specs})
        assert status == 201
        assert len(body["jobs"]) == 1000
        assert len({job["id"] for job in body["jobs"]}) == 1000
        assert await result(client, f"/jobs/{body['jobs'][0]['id']}/status") == "completed"
        _, stats = await get_json(client, "/stats")
        assert stats["jobs"] == 1000


async def test_unknown_job_is_404() -> None:
    async with serve() as client:
        assert await get_json(client, "/jobs/nope/status") == (404, {"detail": "job not found"})
        assert await get_json(client, "/jobs/nope") == (404, {"detail": "job not found"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "duration"),
        ({"duration": -1}, "duration"),
        ({"duration": "5"}, "duration"),
        ({"duration": True}, "duration"),
        ({"duration": 1, "outcome": "maybe"}, "outcome"),
        ({"duration": 1, "colour": "red"}, "colour"),
        ({"duration": 1, "fail_rate": 2}, "fail_rate"),
        ({"duration": 1, "latency": -0.5}, "latency"),
        ({"duration": 1, "hints": "yes"}, "hints"),
        ([1, 2], "body"),
        ({"jobs": [{"duration": 1}, {"duration": -1}]}, "jobs[1].duration"),
        ({"jobs": [{"duration": 1}, 3]}, "jobs[1]"),
        ({"jobs": {"duration": 1}}, "jobs"),
    ],
)
async def test_bad_job_body_is_400_naming_the_field(body: Any, field: str) -> None:
    async with serve() as client:
        status, answer = await post_json(client, "/jobs", body)
        assert status == 400
        assert answer["detail"].startswith(f"{field}:")
        _, stats = await get_json(client, "/stats")
        assert stats["jobs"] == 0


async def test_body_that_is_not_json_is_400() -> None:
    async with serve() as client, client.post("/jobs", data=b"{nope") as response:
        assert response.status == 400
        assert (await response.json())["detail"].startswith("body:")


async def test_rate_limit_fault_sends_429_with_retry_after() -> None:
    config: dict[str, Any] = {"rate_limit_rate": 1.0, "retry_after": 3.0, "fail_rate": 1.0}
    async with serve(delay=0.0, **config) as client, client.get("/status") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"


async def test_fail_fault_sends_503_even_for_terminal_answers() -> None:
    async with serve(delay=0.0, fail_rate=1.0, malformed_rate=1.0) as client:
        async with client.get("/status") as response:
            assert response.status == 503
        _, stats = await get_json(client, "/stats")
        assert stats["by_status"] == {"503": 1}
        _, details = await get_json(client, "/jobs/default")
        assert details["completed_noticed_at"] is None


async def test_malformed_fault_sends_200_with_a_body_that_is_not_json() -> None:
    async with serve(malformed_rate=1.0) as client, client.get("/status") as response:
        assert response.status == 200
        with pytest.raises(ValueError):
            json.loads(await response.read())


async def test_hang_and_latency_delay_the_answer() -> None:
    async with serve(hang_rate=1.0, hang_seconds=0.1, latency=0.05) as client:
        started = time.monotonic()
        assert await result(client) == "pending"
        assert time.monotonic() - started >= 0.15


async def test_per_job_fault_overrides() -> None:
    async with serve(fail_rate=1.0) as client:
        _, job = await post_json(client, "/jobs", {"duration": 0, "fail_rate": 0.0})
        _, faulty = await post_json(client, "/jobs", {"duration": 0, "rate_limit_rate": 1.0})
        assert await result(client, f"/jobs/{job['id']}/status") == "completed"
        async with client.get(f"/jobs/{faulty['id']}/status") as response:
            assert response.status == 429
        async with client.get("/status") as response:
            assert response.status == 503


async def test_hints_give_progress_and_eta_within_the_error_bound() -> None:
    clock = Clock()
    async with serve(clock, hints=True, eta_error=0.2) as client:
        _, job = await post_json(client, "/jobs", {"duration": 10})
        clock.advance(4)
        for _ in range(20):
            status, body = await get_json(client, f"/jobs/{job['id']}/status")
            assert status == 200 and body["result"] == "pending"
            assert body["progress"] == pytest.approx(40.0)
            assert 6 * 0.8 - 1e-3 <= body["eta_seconds"] <= 6 * 1.2 + 1e-3
        clock.advance(6)
        assert await get_json(client, f"/jobs/{job['id']}/status") == (200, {"result": "completed"})


async def test_hints_off_per_job_and_exact_eta_without_error() -> None:
    clock = Clock()
    async with serve(clock, hints=True) as client:
        _, plain = await post_json(client, "/jobs", {"duration": 10, "hints": False})
        _, exact = await post_json(client, "/jobs", {"duration": 10})
        clock.advance(2.5)
        assert await get_json(client, f"/jobs/{plain['id']}/status") == (200, {"result": "pending"})
        _, body = await get_json(client, f"/jobs/{exact['id']}/status")
        assert body == {"result": "pending", "progress": 25.0, "eta_seconds": 7.5}


async def test_hint_retry_after_header_on_pending_answers_only() -> None:
    clock = Clock()
    async with serve(clock, delay=1.0, hint_retry_after=2.5) as client:
        async with client.get("/status") as response:
            assert response.headers["Retry-After"] == "2.5"
        clock.advance(1)
        async with client.get("/status") as response:
            assert "Retry-After" not in response.headers


async def test_max_concurrent_counts_overlapping_requests() -> None:
    async with serve() as client:
        _, slow = await post_json(client, "/jobs", {"duration": 60, "latency": 0.1})
        _, other = await post_json(client, "/jobs", {"duration": 60})
        path = f"/jobs/{slow['id']}/status"
        results = await asyncio.gather(result(client, path), result(client, path))
        assert list(results) == ["pending", "pending"]
        await result(client, f"/jobs/{other['id']}/status")
        await result(client, f"/jobs/{other['id']}/status")
        _, details = await get_json(client, f"/jobs/{slow['id']}")
        assert (details["requests"], details["max_concurrent"], details["in_flight"]) == (2, 2, 0)
        _, details = await get_json(client, f"/jobs/{other['id']}")
        assert (details["requests"], details["max_concurrent"]) == (2, 1)
        _, stats = await get_json(client, "/stats")
        assert stats["max_concurrent"] == 2 and stats["max_in_flight"] == 2


async def test_stats_and_reset() -> None:
    clock = Clock()
    async with serve(clock, delay=3.0) as client:
        _, job = await post_json(client, "/jobs", {"duration": 1})
        await result(client)
        await get_json(client, "/jobs/nope/status")
        _, stats = await get_json(client, "/stats")
        assert stats["requests"] == 2
        assert stats["by_status"] == {"200": 1, "404": 1}
        assert stats["jobs"] == 1
        clock.advance(3)
        assert await post_json(client, "/reset", {}) == (200, {"reset": True})
        _, stats = await get_json(client, "/stats")
        assert (stats["requests"], stats["by_status"], stats["jobs"]) == (0, {}, 0)
        assert (await get_json(client, f"/jobs/{job['id']}/status"))[0] == 404
        assert await result(client) == "pending"
        clock.advance(3)
        assert await result(client) == "completed"


async def test_a_mix_draws_the_durations_of_jobs_posted_without_one() -> None:
    async with serve(seed=4, mix="lognormal", median=30.0, sigma=0.6) as client:
        _, body = await post_json(client, "/jobs", {"jobs": [{}] * 2000 + [{"duration": 2}]})
        durations = [job["duration"] for job in body["jobs"]]
        assert durations[-1] == 2
        assert statistics.median(durations[:-1]) == pytest.approx(30.0, rel=0.05)
        logs = [math.log(d) for d in durations[:-1]]
        assert statistics.stdev(logs) == pytest.approx(0.6, rel=0.05)
        _, details = await get_json(client, "/jobs/default")
        assert details["duration"] != durations[0]  # the default job drew its own


@pytest.mark.parametrize(
    ("mix", "check"),
    [
        (DurationMix("loguniform", low=2.0, high=50.0), lambda d: 2.0 <= min(d) <= max(d) <= 50),
        (
            DurationMix("bimodal", median=10.0, sigma=0.2, long_median=200.0, long_share=0.25),
            lambda d: sum(x > 45 for x in d) / len(d) == pytest.approx(0.25, abs=0.03),
        ),
        (DurationMix("lognormal", median=5.0, sigma=0.0), lambda d: set(d) == {5.0}),
    ],
)
def test_duration_mixes_have_their_shape(mix: DurationMix, check: Any) -> None:
    rng = random.Random(1)
    assert check([mix.sample(rng) for _ in range(2000)])


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "normal"},
        {"kind": "lognormal", "median": 0.0},
        {"kind": "lognormal", "sigma": -1.0},
        {"kind": "bimodal", "long_share": 1.5},
        {"kind": "loguniform", "low": 0.0},
        {"kind": "loguniform", "low": 9.0, "high": 3.0},
        {"kind": "lognormal", "median": math.nan},
    ],
)
def test_bad_mixes_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DurationMix(**fields)


async def test_without_a_mix_a_duration_is_required() -> None:
    async with serve() as client:
        status, answer = await post_json(client, "/jobs", {"jobs": [{"duration": 1}, {}]})
        assert status == 400 and answer["detail"].startswith("jobs[1].duration: required")


async def test_host_rate_limit_answers_429_with_retry_after_beyond_the_bucket() -> None:
    clock = Clock()
    async with serve(clock, delay=0.0, host_rate_limit=2.0, host_burst=3.0) as client:
        _, job = await post_json(client, "/jobs", {"duration": 0})
        paths = ["/status", f"/jobs/{job['id']}/status", "/status"]
        for path in paths:  # the burst, over all jobs
            assert await result(client, path) == "completed"
        async with client.get("/status") as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"
        clock.advance(0.5)  # one token back at 2 per second
        assert await result(client) == "completed"
        async with client.get(f"/jobs/{job['id']}/status") as response:
            assert response.status == 429
        _, stats = await get_json(client, "/stats")
        assert stats["by_status"] == {"200": 4, "429": 2}
        assert (await get_json(client, "/stats"))[0] == 200  # counters are not limited
        clock.advance(10)  # the bucket refills to its burst, no further
        codes = []
        for _ in range(5):
            async with client.get("/status") as response:
                codes.append(response.status)
        assert codes == [200, 200, 200, 429, 429]


async def test_host_rate_limit_retry_after_says_when_a_token_is_back() -> None:
    clock = Clock()
    async with serve(clock, delay=0.0, host_rate_limit=0.25, host_burst=1.0) as client:
        assert await result(client) == "completed"
        async with client.get("/status") as response:
            assert (response.status, response.headers["Retry-After"]) == (429, "4")
        clock.advance(4)
        assert await result(client) == "completed"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_build_the_config() -> None:
    args = parse("--port", "5055", "--delay", "2", "--outcome", "random", "--seed", "3")
    assert (args.host, args.port) == ("127.0.0.1", 5055)
    assert config_from_args(parse()) == SimulatorConfig()
    config = config_from_args(
        parse("--delay", "2", "--outcome", "error", "--fail-rate", "0.5", "--hints")
    )
    assert (config.delay, config.outcome, config.fail_rate, config.hints) == (2, "error", 0.5, True)
    config = config_from_args(parse("--hint-retry-after", "1", "--hang-seconds", "4"))
    assert (config.hint_retry_after, config.hang_seconds) == (1.0, 4.0)
    config = config_from_args(
        parse("--mix", "bimodal", "--median", "20", "--long-median", "240", "--long-share", "0.2")
    )
    assert config.duration_mix() == DurationMix("bimodal", 20.0, 0.6, 240.0, 0.2)
    config = config_from_args(parse("--host-rate-limit", "30", "--host-burst", "40"))
    assert (config.host_rate_limit, config.host_burst) == (30.0, 40.0)
    with pytest.raises(SystemExit, match="medians must be positive"):
        config_from_args(parse("--mix", "lognormal", "--median", "0"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--fail-rate", "1.5"],
        ["--hang-rate", "-0.1"],
        ["--delay", "-1"],
        ["--latency", "nan"],
        ["--retry-after", "soon"],
        ["--outcome", "maybe"],
        ["--port", "70000"],
        ["--mix", "normal"],
        ["--long-share", "2"],
        ["--host-rate-limit", "-1"],
    ],
)
def test_out_of_range_arguments_are_argparse_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config", [{"outcome": "maybe"}, {"error_rate": 2.0}, {"latency": -1.0}, {"delay": -1.0}]
)
def test_config_is_validated(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**config)
