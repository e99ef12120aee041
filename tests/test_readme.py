"""The README stays true: its code blocks compile, its programs run (the client examples against
the simulator, the webhook receiver against signed and forged webhooks), its `vtwatch` command
lines parse, and every `VTW_` variable it names is one the code reads."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shlex
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from client.simulator import SimulatorConfig, create_app
from client.webhooks import new_secret, signature_header
from service.settings import Settings
from worker.cli import build_parser

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)

# `VTW_` variables the README may name that are not Settings fields: the file that reads each.
NOT_SETTINGS = {
    "VTW_LOG_LEVEL": "worker/cli.py",  # --log-level's default
    "VTW_LOG_FORMAT": "worker/cli.py",  # --log-format's default
    "VTW_API_URL": "client/terminal/follow.py",  # vtwatch follow --api's default
    "VTW_API_KEY": "client/terminal/follow.py",  # vtwatch follow --key's default
    "VTW_TEST_REDIS_URL": "tests/service_fixtures.py",  # the test suite's Redis
    "VTW_CHROMIUM": "tests/e2e/test_dashboard_browser.py",  # the browser test's chromium
    "VTW_SCREENSHOTS_DIR": "tests/e2e/test_dashboard_browser.py",  # where it saves screenshots
}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCED.findall(README) if lang == language]


PYTHON = blocks("python")
CLIENT_EXAMPLES = [block for block in PYTHON if "VideoTranslationClient(" in block]
RECEIVERS = [block for block in PYTHON if "web.run_app(" in block]
SDK_EXAMPLES = [block for block in PYTHON if "WatchServiceClient(" in block]


def test_the_readme_has_the_blocks_these_tests_run() -> None:
    assert len(CLIENT_EXAMPLES) == 2 and len(RECEIVERS) == 1 and len(SDK_EXAMPLES) == 1
    # a new block: give it a test
    assert len(PYTHON) == len(CLIENT_EXAMPLES) + len(RECEIVERS) + len(SDK_EXAMPLES)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_blocks_compile(index: int) -> None:
    # Top-level `await` is allowed: a snippet may be the body of your coroutine (or the
    # `python -m asyncio` REPL).
    compile(
        PYTHON[index], f"README.md python block {index}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    """The README's upstream, http://127.0.0.1:5000, on a free port: one job of 1 s."""
    runner = web.AppRunner(create_app(SimulatorConfig(delay=1.0)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def as_program(block: str) -> str:
    """A snippet with top-level `await` becomes the body of a coroutine that prints `final`."""
    if "asyncio.run(" in block:
        return block
    body = "".join(f"    {line}\n" for line in block.splitlines())
    return (
        "import asyncio\nfrom client import VideoTranslationClient\n\n"
        f"async def _main():\n{body}    print(final)\n\nasyncio.run(_main())\n"
    )


@pytest.mark.parametrize("index", range(len(CLIENT_EXAMPLES)))
async def test_client_examples_run_verbatim(simulator: str, index: int) -> None:
    code = as_program(CLIENT_EXAMPLES[index])
    assert "http://127.0.0.1:5000" in code
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace("http://127.0.0.1:5000", simulator),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    output = stdout.decode()
    assert process.returncode == 0, output
    assert output.strip().splitlines()[-1].endswith("completed"), output


def signed(secret: str, body: bytes, msg_id: str) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([secret], msg_id, timestamp, body),
    }


async def test_webhook_receiver_example_accepts_signed_and_refuses_forged_webhooks() -> None:
    secret, port = new_secret(), free_port()
    code = RECEIVERS[0]
    substitutions = {'SECRET = "whsec_..."': f"SECRET = {secret!r}", "port=9000": f"port={port}"}
    for placeholder, value in substitutions.items():
        assert code.count(placeholder) == 1, f"the receiver example has no {placeholder}"
        code = code.replace(placeholder, value)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    assert process.stdout is not None
    url = f"http://127.0.0.1:{port}/hooks"
    body = json.dumps({"type": "watch.completed", "timestamp": "now", "data": {}}).encode()
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            deadline = time.monotonic() + 20
            while True:  # until it listens; a receiver that died says why
                assert process.returncode is None, (await process.stdout.read()).decode()
                try:
                    await http.get(url)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the receiver example never listened"
                    await asyncio.sleep(0.05)
            good = await http.post(url, content=body, headers=signed(secret, body, "msg_good"))
            forged = await http.post(
                url, content=body, headers=signed(new_secret(), body, "msg_forged")
            )
            unsigned = await http.post(url, content=body)
    finally:
        if process.returncode is None:
            process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    assert 200 <= good.status_code < 300
    assert 400 <= forged.status_code < 500 and 400 <= unsigned.status_code < 500
    assert "watch.completed msg_good" in output.decode()
    assert "msg_forged" not in output.decode()


def vtwatch_command_lines() -> list[str]:
    """Every `vtwatch ...` line of the sh blocks (after any VAR=value), and inline `vtwatch ...`."""
    lines = [line for block in blocks("sh") for line in block.splitlines()]
    lines += re.findall(r"`(vtwatch [^`]*)`", README)
    commands = []
    for line in lines:
        if match := re.match(r"\s*(?:[A-Za-z_]\w*=\S*\s+)*(vtwatch\b.*)", line):
            commands.append(shlex.join(shlex.split(match[1], comments=True)))
    return list(dict.fromkeys(commands))


async def test_the_sdk_example_follows_a_watch_to_its_end(no_vtw_env: None) -> None:
    """The SDK block against `vtwatch dev` (API + worker + embedded store) in this process."""
    from worker.dev import run_dev

    runner = web.AppRunner(create_app(SimulatorConfig(delay=1.0)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    status_url = f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    port = free_port()
    dev = asyncio.create_task(run_dev(Settings(), "127.0.0.1", port))
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            for _ in range(200):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        block = SDK_EXAMPLES[0].replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
        namespace: dict[str, object] = {}
        exec(compile(block, "README.md SDK block", "exec"), namespace)
        follow_one = namespace["follow_one"]
        assert callable(follow_one)
        assert await asyncio.wait_for(follow_one(status_url), 30) == "completed"
    finally:
        dev.cancel()
        await asyncio.gather(dev, return_exceptions=True)
        await runner.cleanup()


def test_the_readme_shows_vtwatch_commands() -> None:
    assert len(vtwatch_command_lines()) >= 7


@pytest.mark.parametrize("command", vtwatch_command_lines())
def test_vtwatch_command_lines_parse(command: str) -> None:
    try:
        args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"`{command}` does not parse (exit {exc.code})")
    assert callable(args.func)


def readme_variables() -> set[str]:
    """`VTW_NAME`s, and the names listed after "Configuration (`VTW_` environment variables)"."""
    names = set(re.findall(r"\bVTW_[A-Z0-9_]*[A-Z0-9]", README))
    paragraph = README.split("Configuration (`VTW_` environment variables):", 1)[1].split("\n\n")[0]
    listed = re.findall(r"`([A-Z][A-Z0-9_]+)`", paragraph)
    assert len(listed) >= 10, paragraph
    return names | {f"VTW_{name}" for name in listed}


def test_the_variables_that_are_not_settings_are_read_where_listed() -> None:
    for name, path in NOT_SETTINGS.items():
        assert f'"{name}"' in (ROOT / path).read_text(), f"{path} does not read {name}"


def test_every_vtw_variable_the_readme_names_is_read() -> None:
    settings = {f"VTW_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(readme_variables() - settings - NOT_SETTINGS.keys())
    assert not unknown, f"README names VTW_ variables that nothing reads: {unknown}"
