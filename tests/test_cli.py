"""The `vtwatch` command line: real processes, loopback only."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from client.simulator import SimulatorConfig, create_app
from worker.cli import EXIT_CONFIG

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
    # 4 s: `vtwatch watch` starts a Python process, which on a loaded machine takes seconds; it
    # must still see the job pending first.
    runner = web.AppRunner(create_app(SimulatorConfig(delay=4.0, hints=True)), access_log=None)
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
    assert code == EXIT_CONFIG and "backoff_factor is out of range" in output
    assert "Traceback" not in output


async def test_api_refuses_a_public_bind_without_api_keys() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    code, output = await run("api", "--host", "0.0.0.0", "--port", "1", env=env)
    assert code == EXIT_CONFIG and "refusing to listen on 0.0.0.0 without API keys" in output


async def test_invalid_settings_are_reported_plainly() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", "VTW_LEASE_SECONDS": "-3"}
    code, output = await run("worker", env=env)
    assert code == EXIT_CONFIG and "invalid configuration" in output
    assert "VTW_LEASE_SECONDS" in output
    assert "Traceback" not in output


async def test_invalid_secrets_are_not_echoed() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", "VTW_API_KEYS": "a:supersecret,broken"}
    code, output = await run("worker", env=env)
    assert code == EXIT_CONFIG and "VTW_API_KEYS" in output and "tenant:key" in output
    assert "supersecret" not in output


def run_in_a_terminal(*args: str) -> tuple[int, str]:
    """Run `vtwatch` with a pseudo-terminal as its stdout/stderr; returns (code, output)."""
    import os
    import pty
    import subprocess

    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen(
        [*VTWATCH, *args], stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL, env=env
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


async def test_watch_on_a_terminal_shows_a_live_progress_bar(job_url: str) -> None:
    code, output = await asyncio.to_thread(
        run_in_a_terminal, "watch", job_url, "--initial-wait-time", "0.2"
    )

    assert code == 0, output
    assert "\x1b[" in output  # a live display, redrawn in place
    assert "━" in output and "completed" in output and "attempt" in output
    assert "next poll in" in output
    assert output.rstrip().endswith("final: completed")


async def test_watch_in_a_pipe_prints_plain_lines(job_url: str) -> None:
    code, output = await run("watch", job_url, "--initial-wait-time", "0.2")

    lines = output.splitlines()
    assert code == 0 and "\x1b[" not in output
    assert lines[0] == f"watching {job_url}" and lines[1].startswith("pending: attempt 1")
    assert lines[-2].startswith("completed: attempt") and lines[-1] == "final: completed"


async def test_watch_shows_its_end_once(job_url: str) -> None:
    code, output = await run("watch", job_url, "--initial-wait-time", "0.2")

    lines = output.splitlines()
    assert code == 0 and [line for line in lines if line.startswith("completed")] == [lines[-2]]


def watch_json(state: str, attempts: int, **fields: object) -> dict[str, object]:
    """A watch as the API renders it."""
    ended = state != "pending"
    return {
        "id": "w-1",
        "state": state,
        "reason": None,
        "status_url": "http://127.0.0.1:1/status",
        "webhook_url": None,
        "metadata": {},
        "policy": {},
        "attempts": attempts,
        "last_result": None,
        "last_error": None,
        "progress": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
        "last_polled_at": "2026-01-01T00:00:01Z",
        "next_poll_at": None if ended else "2026-01-01T00:00:02Z",
        "deadline": "2026-01-01T01:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z" if ended else None,
        "webhook": {"state": "none", "attempts": 0, "last_status_code": None},
        **fields,
    }


@pytest.fixture
async def service_url() -> AsyncIterator[str]:
    """A service whose watch `w-1` fails a poll, then ends in `error` (as the API streams it:
    the poll that ended it, then the end)."""
    events = [
        ("poll", watch_json("pending", 1, last_error="upstream timed out")),
        ("poll", watch_json("error", 2, reason="upstream error: unsupported codec")),
        ("state", watch_json("error", 2, reason="upstream error: unsupported codec")),
    ]

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, (name, watch) in enumerate(events, 1):
            data = json.dumps(watch)
            await response.write(f"id: {number}-0\nevent: {name}\ndata: {data}\n\n".encode())
        return response

    app = web.Application()
    app.router.add_get("/v1/watches/w-1/events", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_follow_shows_the_end_once_and_why(service_url: str) -> None:
    code, output = await run("follow", "w-1", "--api", service_url)

    lines = output.splitlines()
    assert code == 1, output
    assert lines[1].startswith("pending: attempt 1, ") and lines[1].endswith("upstream timed out")
    assert lines[2:] == ["error: attempt 2, upstream error: unsupported codec"]
