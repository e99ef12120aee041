"""The client against the real simulator on loopback (real time, short jobs)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from client import Status, StatusUpdate, VideoTranslationClient
from client.simulator import SimulatorConfig, create_app

README = Path(__file__).parent.parent / "README.md"
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


def readme_examples() -> list[str]:
    """The README's client examples (python blocks that use VideoTranslationClient)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if "VideoTranslationClient(" in block]


@pytest.mark.parametrize("index", range(len(readme_examples())))
async def test_readme_examples_run_verbatim(simulator: object, index: int) -> None:
    base = await simulator(delay=1.0)  # type: ignore[operator]
    code = readme_examples()[index].replace("http://127.0.0.1:5000", base)
    if "asyncio.run(" not in code:
        code = "import asyncio\nfrom client import VideoTranslationClient\n\nasync def _main():\n"
        code += "".join(f"    {line}\n" for line in readme_examples()[index].splitlines())
        code = code.replace("http://127.0.0.1:5000", base)
        code += "    print(final)\n\nasyncio.run(_main())\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=README.parent
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert stdout.decode().strip().splitlines()[-1].endswith("completed")


async def test_polls_the_real_simulator_until_completed(simulator: object) -> None:
    base = await simulator(delay=1.2, hints=True)  # type: ignore[operator]
    updates: list[StatusUpdate] = []
    async with VideoTranslationClient(base, initial_wait_time=0.2, jitter=0.05) as client:
        result = await client.poll(on_update=updates.append)
    assert result.status is Status.COMPLETED
    assert updates[0] == "pending" and updates[0].progress is not None
    assert 1.2 <= result.elapsed < 3.0


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
    from client.demo import run_demo

    port = socket_free_port()
    assert await run_demo(f"http://127.0.0.1:{port}", delay=0.5, seed=1) == "completed"
    output = capsys.readouterr().out
    assert "Started a simulator" in output and "Final status: completed" in output


def socket_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
