"""`vtwatch dev --demo` (what `make run` starts): a first watch goes from pending to completed."""

from __future__ import annotations

import asyncio
import signal

import pytest

from .procs import coverage_env, free_port, vtwatch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_make_run_shows_a_first_watch_completing() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *vtwatch(),
        "dev",
        "--demo",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **coverage_env()},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("watch ended as 'completed'" in line for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, "vtwatch dev exited early:\n" + "".join(lines)
                lines.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        lines.append(output.decode())
    text = "".join(lines)
    assert "EMBEDDED IN-MEMORY store" in text  # the loud warning
    assert "Demo: state=pending" in text and "Demo: state=completed" in text
    assert process.returncode == 0, text
    assert "worker stopped" in text and "Traceback" not in text
