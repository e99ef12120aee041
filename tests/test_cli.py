"""The `vtwatch` command line: real processes, loopback only."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from client.simulator import SimulatorConfig, create_app

VTWATCH = [sys.executable, "-c", "from worker.cli import main; main()"]


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *VTWATCH,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture
async def job_url() -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(SimulatorConfig(delay=2.0, hints=True)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    await runner.cleanup()


async def test_watch_follows_a_job_and_exits_0_on_completed(job_url: str) -> None:
    code, output = await run("watch", job_url, "--initial-wait-time", "0.2")
    assert code == 0, output
    assert "pending" in output and output.strip().endswith("final: completed")


async def test_watch_exits_2_on_timeout(job_url: str) -> None:
    code, output = await run("watch", job_url, "--max-wait-time", "0.3")
    assert code == 2 and output.strip().endswith("final: timeout")


async def test_bad_parameters_are_one_line_not_a_traceback(job_url: str) -> None:
    code, output = await run("watch", job_url, "--backoff-factor", "0.5")
    assert code == 1 and "backoff_factor is out of range" in output
    assert "Traceback" not in output


async def test_api_refuses_a_public_bind_without_api_keys() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    code, output = await run("api", "--host", "0.0.0.0", "--port", "1", env=env)
    assert code == 1 and "refusing to listen on 0.0.0.0 without API keys" in output


async def test_invalid_settings_are_reported_plainly() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", "VTW_LEASE_SECONDS": "-3"}
    code, output = await run("worker", env=env)
    assert code == 1 and "invalid configuration" in output and "VTW_LEASE_SECONDS" in output
    assert "Traceback" not in output


async def test_invalid_secrets_are_not_echoed() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", "VTW_API_KEYS": "a:supersecret,broken"}
    code, output = await run("worker", env=env)
    assert code == 1 and "VTW_API_KEYS" in output and "tenant:key" in output
    assert "supersecret" not in output
