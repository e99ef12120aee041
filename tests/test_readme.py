"""The README and docs/ stay true: their code blocks compile, their programs run (the client
examples against the simulator, the webhook receivers against signed and forged webhooks, the SDK
example against `vtwatch dev`), their `vtwatch` command lines parse, every `VTW_` variable they
name is one the code reads, docs/configuration.md's table and the Settings class list the same
variables, every relative link resolves, and the README stays short."""

from __future__ import annotations

import ast
import asyncio
import json
import os
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
from service.api.schemas import WatchCreate
from service.settings import Settings
from worker.cli import build_parser

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
# Every page: the README, then docs/ in name order.
PAGES = {"README.md": README} | {
    f"docs/{path.name}": path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))
}
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
README_MAX_LINES = 150

# `VTW_` variables the README may name that are not Settings fields: the file that reads each.
NOT_SETTINGS = {
    "VTW_LOG_LEVEL": "worker/cli.py",  # --log-level's default
    "VTW_LOG_FORMAT": "worker/cli.py",  # --log-format's default
    "VTW_API_URL": "client/terminal/follow.py",  # vtwatch follow --api's default
    "VTW_API_KEY": "client/terminal/follow.py",  # vtwatch follow --key's default
    "VTW_TEST_REDIS_URL": "tests/service_fixtures.py",  # the test suite's Redis
    "VTW_CHROMIUM": "tests/e2e/conftest.py",  # the browser tests' chromium
    "VTW_SCREENSHOTS_DIR": "tests/e2e/test_dashboard_browser.py",  # where it saves screenshots
    "VTW_HEALTHCHECK_URL": "deploy/Dockerfile",  # the image's HEALTHCHECK
    "VTW_API_PUBLISH": "deploy/compose.yaml",  # where compose publishes the API
    "VTW_WORKER_REPLICAS": "deploy/compose.yaml",  # compose's worker containers
    "VTW_DEMO_SUBNET": "deploy/compose.yaml",  # the demo profile's network
    "VTW_REDIS_PORT": "deploy/compose.hostnet.yaml",  # host-network compose's ports
    "VTW_API_PORT": "deploy/compose.hostnet.yaml",
    "VTW_SIMULATOR_PORT": "deploy/compose.hostnet.yaml",
    "VTW_RECEIVER_PORT": "deploy/compose.hostnet.yaml",
}


def blocks(language: str, pages: dict[str, str] = PAGES) -> list[str]:
    return [
        body for text in pages.values() for lang, body in FENCED.findall(text) if lang == language
    ]


PYTHON = blocks("python")
README_PYTHON = blocks("python", {"README.md": README})
CLIENT_EXAMPLES = [block for block in PYTHON if "VideoTranslationClient(" in block]
RECEIVERS = [block for block in PYTHON if "web.run_app(" in block]
SDK_EXAMPLES = [block for block in PYTHON if "WatchServiceClient(" in block]


def test_the_pages_have_the_blocks_these_tests_run() -> None:
    # the README's client example and tour receiver; docs/client.md's two client examples and
    # the SDK example; docs/upstreams.md's client example; docs/webhooks.md's receiver
    assert len(CLIENT_EXAMPLES) == 4 and len(RECEIVERS) == 2 and len(SDK_EXAMPLES) == 1
    assert any("VideoTranslationClient(" in block for block in README_PYTHON)
    assert any("web.run_app(" in block for block in README_PYTHON)
    # a new block: give it a test
    assert len(PYTHON) == len(CLIENT_EXAMPLES) + len(RECEIVERS) + len(SDK_EXAMPLES)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_blocks_compile(index: int) -> None:
    # Top-level `await` is allowed: a snippet may be the body of your coroutine (or the
    # `python -m asyncio` REPL).
    compile(PYTHON[index], f"python block {index}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


UPSTREAM_EXAMPLES = [block for block in blocks("json") if '"upstream"' in block]


@pytest.mark.parametrize("index", range(len(UPSTREAM_EXAMPLES)))
def test_upstream_examples_are_registrations_the_api_takes(index: int) -> None:
    """Every registration with an `upstream` the README and docs show validates as the API's
    WatchCreate, and its rules compile (as `POST /v1/watches` checks them)."""
    body = WatchCreate.model_validate_json(UPSTREAM_EXAMPLES[index])
    assert body.upstream is not None
    body.upstream.upstream()


def test_the_readme_shows_a_preset_and_custom_rules() -> None:
    readme = [block for block in UPSTREAM_EXAMPLES if block in README]
    assert any('"preset"' in block for block in readme)
    assert any('"rules"' in block for block in readme)


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


@pytest.mark.parametrize("index", range(len(RECEIVERS)))
async def test_webhook_receiver_example_accepts_signed_and_refuses_forged_webhooks(
    index: int,
) -> None:
    """The receiver as pasted, given its secret in `WEBHOOK_SECRET` (as the README's tour does)."""
    secret, port = new_secret(), free_port()
    code = RECEIVERS[index]
    assert 'os.environ["WEBHOOK_SECRET"]' in code and code.count("port=9000") == 1
    code = code.replace("port=9000", f"port={port}")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "WEBHOOK_SECRET": secret},
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
    """Every `vtwatch ...` line of the sh blocks (after any VAR=value, or `.venv/bin/`), and
    inline `vtwatch ...`, in README and docs/."""
    lines = [line for block in blocks("sh") for line in block.splitlines()]
    lines = [re.sub(r"^(\s*)\.venv/bin/vtwatch\b", r"\1vtwatch", line) for line in lines]
    inline = [cmd for text in PAGES.values() for cmd in re.findall(r"`(vtwatch\s[^`]*)`", text)]
    lines += [" ".join(cmd.split()) for cmd in inline]  # a span may wrap over two lines
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
        namespace: dict[str, object] = {"__name__": "sdk_example"}  # not "__main__"
        exec(compile(block, "the SDK block", "exec"), namespace)
        follow_one = namespace["follow_one"]
        assert callable(follow_one)
        assert await asyncio.wait_for(follow_one(status_url), 30) == "completed"
    finally:
        dev.cancel()
        await asyncio.gather(dev, return_exceptions=True)
        await runner.cleanup()


def test_the_pages_show_vtwatch_commands() -> None:
    assert len(vtwatch_command_lines()) >= 7
    for command in ("vtwatch dev", "vtwatch api", "vtwatch worker", "vtwatch simulate"):
        assert any(line.startswith(command) for line in vtwatch_command_lines()), command


@pytest.mark.parametrize("command", vtwatch_command_lines())
def test_vtwatch_command_lines_parse(command: str) -> None:
    try:
        args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"`{command}` does not parse (exit {exc.code})")
    assert callable(args.func)


def named_variables() -> set[str]:
    """Every `VTW_NAME` that README.md or a docs/ page names."""
    return {name for text in PAGES.values() for name in re.findall(VARIABLE, text)}


VARIABLE = r"\bVTW_[A-Z0-9_]*[A-Z0-9]"
SETTINGS = {f"VTW_{name.upper()}" for name in Settings.model_fields}


def configuration_table() -> list[str]:
    """The variables of docs/configuration.md's one table, in its order."""
    text = PAGES["docs/configuration.md"]
    tables = re.findall(r"^\| variable \|.*\n\|[-|]+\|\n((?:\|.*\n?)+)", text, flags=re.M)
    assert len(tables) == 1, "docs/configuration.md has one table of variables"
    names = []
    for row in tables[0].splitlines():
        first = row.split("|")[1]
        names += re.findall(VARIABLE, first)
    return names


def test_the_variables_that_are_not_settings_are_read_where_listed() -> None:
    for name, path in NOT_SETTINGS.items():
        assert name in (ROOT / path).read_text(), f"{path} does not read {name}"


def test_every_vtw_variable_the_pages_name_is_read() -> None:
    unknown = sorted(named_variables() - SETTINGS - NOT_SETTINGS.keys())
    assert not unknown, f"README or docs/ name VTW_ variables that nothing reads: {unknown}"


def test_configuration_documents_every_setting_and_nothing_else() -> None:
    table = configuration_table()
    assert len(table) == len(set(table)), "a variable listed twice"
    missing = sorted(SETTINGS - set(table))
    assert not missing, f"Settings fields docs/configuration.md does not document: {missing}"
    unknown = sorted(set(table) - SETTINGS - NOT_SETTINGS.keys())
    assert not unknown, f"docs/configuration.md documents variables nothing reads: {unknown}"
    undocumented = sorted(named_variables() - set(table))
    assert not undocumented, f"named in README or docs/ but not in the table: {undocumented}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose = FENCED.sub("", text)
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.*)$", prose, flags=re.M):
        base = anchor = slug(heading)
        count = 0
        while anchor in found:
            count += 1
            anchor = f"{base}-{count}"
        found.add(anchor)
    return found


def relative_links() -> list[tuple[str, str]]:
    """(page, target) of every relative link and image of README.md and docs/."""
    links = []
    for page, text in PAGES.items():
        prose = FENCED.sub("", text)
        targets = re.findall(r"\]\(([^)\s]+)\)", prose) + re.findall(r'src="([^"]+)"', prose)
        links += [(page, target) for target in targets if not re.match(r"[a-z]+:", target)]
    return links


def test_the_pages_have_relative_links() -> None:
    assert len(relative_links()) >= 30


@pytest.mark.parametrize(("page", "target"), relative_links())
def test_relative_links_resolve(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    assert file.exists(), f"{page} links to {target}: no such file"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file.read_text()), f"{page} links to {target}: no such heading"


def test_the_readme_is_short_and_names_the_two_commands() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES
    assert "make run" in README and "make test" in README
    assert "(docs/configuration.md)" in README


@pytest.mark.parametrize("page", [page for page in PAGES if page.startswith("docs/")])
def test_every_docs_page_starts_with_what_it_answers(page: str) -> None:
    title, rest = PAGES[page].split("\n", 1)
    assert title.startswith("# ")
    assert rest.lstrip().startswith("*What this page answers:"), page
