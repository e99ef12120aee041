"""A configuration that cannot work ends `vtwatch api`/`worker`/`dev` before it serves: one line
on stderr naming the variable, the problem and a good value, exit status `EXIT_CONFIG`, never a
traceback. Real processes, each with only the `VTW_` variables the test gives it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import free_port, vtwatch
from tests.service_fixtures import REAL_REDIS_URL, real_redis_or_skip
from worker.cli import EXIT_CONFIG

ROOT = Path(__file__).resolve().parents[1]


async def run(command: str, port: int | None = None, **settings: str) -> tuple[int, str]:
    """Run `vtwatch COMMAND` on loopback with these `VTW_*` settings only; (status, stderr)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VTW_", "COVERAGE_"))  # no stray settings; untraced, fast
    }
    env |= {"PYTHONUNBUFFERED": "1", **settings}
    args = [command]
    if command in ("api", "dev"):
        args += ["--host", "127.0.0.1", "--port", str(port or free_port())]
    process = await asyncio.create_subprocess_exec(
        *vtwatch(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


def assert_one_line(code: int, stderr: str, *needles: str) -> None:
    assert code == EXIT_CONFIG, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vtwatch: invalid configuration: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr


@pytest.mark.parametrize("command", ["api", "worker"])
@pytest.mark.parametrize(
    "url", ["redis//127.0.0.1:6379/0", "http://127.0.0.1:6379/0", "redis://127.0.0.1:99999/0"]
)
async def test_a_redis_url_of_the_wrong_shape(command: str, url: str) -> None:
    code, stderr = await run(command, VTW_REDIS_URL=url)

    assert_one_line(code, stderr, "VTW_REDIS_URL", "e.g. VTW_REDIS_URL=redis://")


@pytest.mark.parametrize("command", ["api", "worker"])
async def test_a_redis_url_with_a_password_is_not_echoed(command: str) -> None:
    code, stderr = await run(command, VTW_REDIS_URL="http://:hunter2secret@127.0.0.1:6379/0")

    assert_one_line(code, stderr, "VTW_REDIS_URL")
    assert "hunter2secret" not in stderr


@pytest.mark.parametrize("command", ["api", "worker", "dev"])
async def test_cluster_mode_against_a_single_redis(command: str) -> None:
    await (await real_redis_or_skip()).aclose()

    code, stderr = await run(command, VTW_REDIS_URL=REAL_REDIS_URL, VTW_REDIS_CLUSTER="true")

    assert_one_line(code, stderr, "VTW_REDIS_CLUSTER", "cluster mode", "e.g. ")


@pytest.mark.parametrize("command", ["api", "worker"])
@pytest.mark.parametrize(
    ("name", "value"), [("VTW_LOG_LEVEL", "verbose"), ("VTW_LOG_FORMAT", "yaml")]
)
async def test_an_unknown_log_level_or_format(command: str, name: str, value: str) -> None:
    code, stderr = await run(command, **{name: value})

    assert_one_line(code, stderr, name, repr(value), f"e.g. {name}=")


@pytest.mark.parametrize("command", ["api", "worker"])
@pytest.mark.parametrize("networks", ["localhost", "10.0.0.0/33", "127.0.0.0/8,10.0.0.1/8"])
async def test_allowed_networks_that_are_not_cidrs(command: str, networks: str) -> None:
    code, stderr = await run(command, VTW_ALLOWED_NETWORKS=networks)

    assert_one_line(code, stderr, "VTW_ALLOWED_NETWORKS", "CIDR", "e.g. VTW_ALLOWED_NETWORKS=")
    assert "LAX-OR-STRICT" not in stderr.upper()


@pytest.mark.parametrize("command", ["api", "worker"])
@pytest.mark.parametrize(
    ("name", "value", "good"),
    [
        ("VTW_LEASE_SECONDS", "-3", "e.g. VTW_LEASE_SECONDS=30"),
        ("VTW_REDIS_CLUSTER", "maybe", "e.g. VTW_REDIS_CLUSTER=false"),
        ("VTW_WEBHOOK_RETRY_SCHEDULE", "5,soon", "item 2"),
        ("VTW_HOST_BURST", "0", "e.g. VTW_HOST_BURST=5"),
        ("VTW_RETENTION_SECONDS", "100", "e.g. VTW_RETENTION_SECONDS="),
    ],
)
async def test_a_value_out_of_bounds_or_of_the_wrong_type(
    command: str, name: str, value: str, good: str
) -> None:
    code, stderr = await run(command, **{name: value})

    assert_one_line(code, stderr, name, good)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "hint"), [("api", "--port"), ("dev", "make run PORT="), ("dev", "--port")]
)
async def test_a_port_in_use_is_named_with_the_flag_that_picks_another(
    busy_port: int, command: str, hint: str
) -> None:
    code, stderr = await run(command, port=busy_port)

    assert_one_line(code, stderr, f"port {busy_port}", "in use", hint)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
@pytest.mark.parametrize(("given", "port"), [([], "8000"), (["PORT=8123"], "8123")])
def test_make_run_takes_a_port(given: list[str], port: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PORT"}
    dry_run = subprocess.run(
        ["make", "-n", "run", *given], capture_output=True, text=True, env=env, cwd=ROOT
    )

    assert dry_run.returncode == 0, dry_run.stderr
    assert f"vtwatch dev --demo --port {port}\n" in dry_run.stdout
