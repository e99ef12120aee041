"""The client against the real simulator on loopback (real time, short jobs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client import PollResult, Status, StatusUpdate, VideoTranslationClient
from client.simulator import SimulatorConfig, create_app
from client.upstream import MAX_BODY_BYTES

StartSimulator = Callable[..., "asyncio.Future[str]"]


@pytest.fixture
async def simulator() -> AsyncIterator[Callable[..., object]]:
    """Start simulators in this loop; returns their base URL."""
    runners: list[web.AppRunner] = []

    async def start(**config: object) -> str:
        runner = web.AppRunner(create_app(SimulatorConfig(**config)), access_log=None)  # type: ignore[arg-type]
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_polls_the_real_simulator_until_completed(simulator: object) -> None:
    base = await simulator(delay=1.2, hints=True)  # type: ignore[operator]
    updates: list[StatusUpdate] = []
    async with VideoTranslationClient(base, initial_wait_time=0.2, jitter=0.05) as client:
        result = await client.poll(on_update=updates.append)
    assert result.status is Status.COMPLETED
    assert updates[0] == "pending" and updates[0].progress is not None
    # The job's 1.2 s run from its creation, a moment before the client starts its clock.
    assert 1.1 <= result.elapsed < 3.0


async def test_reports_error_from_the_real_simulator(simulator: object) -> None:
    base = await simulator(delay=0.3, outcome="error")  # type: ignore[operator]
    client = VideoTranslationClient(base, initial_wait_time=0.1, jitter=0)
    assert await client.get_status() == "error"


async def test_rides_out_faults_of_the_real_simulator(simulator: object) -> None:
    base = await simulator(  # type: ignore[operator]
        delay=0.5, fail_rate=0.3, rate_limit_rate=0.2, retry_after=0.1, malformed_rate=0.2, seed=3
    )
    client = VideoTranslationClient(
        base,
        initial_wait_time=0.05,
        max_interval=0.2,
        jitter=0,
        max_attempts=None,
        max_wait_time=10,
    )
    result = await client.poll()
    assert result.status is Status.COMPLETED
    assert any(update.error for update in result.updates)


async def test_a_hanging_upstream_costs_at_most_one_request_timeout(simulator: object) -> None:
    base = await simulator(delay=60, hang_rate=1.0, hang_seconds=2)  # type: ignore[operator]
    client = VideoTranslationClient(base, max_wait_time=1.0, request_timeout=0.5, max_attempts=None)
    started = time.monotonic()
    result = await client.poll()
    assert result.status is Status.TIMEOUT
    assert time.monotonic() - started <= 1.0 + 0.5 + 0.3  # deadline + one request + slack
    assert result.last_error == "request timed out"


async def test_an_unknown_job_is_an_error_at_once(simulator: object) -> None:
    base = await simulator(delay=1)  # type: ignore[operator]
    client = VideoTranslationClient(base, status_path="/jobs/nope/status")
    result = await client.poll()
    assert result.status is Status.ERROR and result.attempts == 1


async def test_the_demo_starts_a_simulator_when_none_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from client.terminal.demo import run_demo

    port = socket_free_port()
    assert await run_demo(f"http://127.0.0.1:{port}", delay=0.5, seed=1) == "completed"
    output = capsys.readouterr().out
    assert "Started a simulator" in output and "Final status: completed" in output


def socket_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Hostile upstreams (issue 8, item 7): whatever the reply, the real client ends with a status.

PENDING = b'{"result": "pending"}'
HUGE_INT = b"9" * 400
HEAD, TAIL = b'{"result": "completed", "pad": "', b'"}'
AT_CAP = HEAD + b"x" * (MAX_BODY_BYTES - len(HEAD) - len(TAIL)) + TAIL
HOSTILE_REPLIES: dict[str, tuple[bytes, dict[str, str], str]] = {
    "result-array": (b'{"result": []}', {}, "timeout"),
    "result-object": (b'{"result": {}}', {}, "timeout"),
    "60000-nested-arrays": (b"[" * 60_000, {}, "timeout"),
    "400-digit-progress": (b'{"result": "pending", "progress": ' + HUGE_INT + b"}", {}, "timeout"),
    "400-digit-eta-when-done": (
        b'{"result": "completed", "eta_seconds": ' + HUGE_INT + b"}",
        {},
        "completed",
    ),
    "non-finite-hints": (
        b'{"result": "error", "progress": NaN, "eta_seconds": Infinity}',
        {},
        "error",
    ),
    "lone-surrogate": (b'{"result": "\\ud800"}', {}, "timeout"),
    "not-utf8": (b"\xff\xfe\xfd", {}, "timeout"),
    "top-level-array": (b'["completed"]', {}, "timeout"),
    "exactly-64-KiB": (AT_CAP, {}, "completed"),
    "over-64-KiB": (AT_CAP[:-2] + b'x"}', {}, "timeout"),
    "huge-retry-after": (PENDING, {"Retry-After": "9" * 400}, "timeout"),
    "negative-retry-after": (PENDING, {"Retry-After": "-99999"}, "timeout"),
    "overflowing-retry-after-date": (
        PENDING,
        {"Retry-After": "Wed, 21 Oct 99999999999999999999 07:28:30 GMT"},
        "timeout",
    ),
}
DEADLINE = 0.3
SLACK = 1.0  # far below the 2 s request timeout: only a loaded machine needs it


async def poll_hostile(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[PollResult, float]:
    """Poll a real loopback server answering with `handler`; returns (result, seconds taken)."""
    app = web.Application()
    app.router.add_get("/status", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        client = VideoTranslationClient(
            str(server.make_url("")).rstrip("/"),
            max_attempts=None,
            max_wait_time=DEADLINE,
            initial_wait_time=0.05,
            max_interval=0.1,
            jitter=0,
            request_timeout=2,
        )
        started = time.monotonic()
        result = await client.poll()
        return result, time.monotonic() - started


@pytest.mark.parametrize("name", list(HOSTILE_REPLIES))
async def test_a_hostile_upstream_ends_with_a_status_within_the_deadline(name: str) -> None:
    raw, headers, expected = HOSTILE_REPLIES[name]

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=raw, headers=headers, content_type="application/json")

    result, took = await poll_hostile(handle)
    assert result.status == expected
    assert took <= DEADLINE + SLACK
    assert result.last_error is None or len(result.last_error) <= 100
    if expected == "timeout":  # it kept polling on the backoff to the deadline, no hot loop
        assert 2 <= result.attempts <= 8
        assert all(update == "pending" for update in result.updates)


async def test_a_chunked_body_over_64_kib_is_cut_off_and_retried() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"result": "completed", "pad": "')
        for _ in range(20):
            await response.write(b"x" * 4096)
        await response.write(b'"}')
        return response

    result, took = await poll_hostile(handle)
    assert result.status is Status.TIMEOUT and took <= DEADLINE + SLACK
    assert result.last_error == "response body over 64 KiB"
