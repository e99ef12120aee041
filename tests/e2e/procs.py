"""Real processes on loopback for the end-to-end tests.

Free ports, the `VTW_*` environment of a service process, starting a process with its output in
a log file, readiness by polling (never by sleeping), and a teardown that terminates (then kills)
everything it started and can print the tail of every log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SHARED_REDIS_URL = os.environ.get("VTW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
T = TypeVar("T")


def vtwatch() -> list[str]:
    """The `vtwatch` console script next to this interpreter (or its entry point)."""
    script = BIN / "vtwatch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from worker.cli import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_block(count: int) -> int:
    """The first of `count` consecutive ports free on every address, below the ephemeral range
    (from 32768 the kernel hands ports to outgoing connections, which would take the port after
    a free one as often as not on a busy machine)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def coverage_env() -> dict[str, str]:
    """What makes a Python subprocess measure its coverage (set by coverage's `patch =
    ["subprocess"]` in the test process): merge it into any environment built from scratch."""
    return {key: value for key, value in os.environ.items() if key.startswith("COVERAGE_")}


def service_env(redis_url: str, namespace: str, **settings: object) -> dict[str, str]:
    """The environment of an API or worker process: our `VTW_*` settings only, no stray ones."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VTW_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "VTW_REDIS_URL": redis_url,
        "VTW_NAMESPACE": namespace,
        "VTW_ALLOWED_NETWORKS": ALLOWED_NETWORKS,
        # The tests' fast policies poll every 0.1 s; production's floor is 1 s.
        "VTW_MIN_POLL_INTERVAL": "0.05",
        # Several workers run at once: each serves metrics only where a test asks for it.
        "VTW_METRICS_PORT": "0",
        # Tests poll one loopback simulator hundreds of times a second: the fleet-wide host
        # budget is out of their way unless a test sets its own.
        "VTW_HOST_RATE_LIMIT": "100000",
        # ...and so is the budget of a webhook receiver's host (a test's receiver takes
        # hundreds of webhooks a second).
        "VTW_WEBHOOK_HOST_RATE_LIMIT": "100000",
    }
    env |= {f"VTW_{name.upper()}": str(value) for name, value in settings.items()}
    return env


async def poll_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds.

    `alive` is called between tries and should raise when a process died unexpectedly."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if alive is not None:
            alive()
        try:
            result = await check()
        except (httpx.HTTPError, OSError) as exc:
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


@dataclass
class Proc:
    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    expect_exit: bool = False  # stopped or killed on purpose by the test

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        """Send a signal on purpose (the process may now exit)."""
        self.expect_exit = True
        if self.running():
            self.popen.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """Wait (polling) for the process to exit; returns its exit code."""

        async def exited() -> int | None:
            code = self.popen.poll()
            return None if code is None else code + 1000  # 0 must count as "done"

        code = await poll_until(exited, timeout=timeout, what=f"{self.name} to exit", interval=0.02)
        return code - 1000

    def describe(self) -> str:
        code = self.popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"{self.name} (pid {self.pid}, {state}): {' '.join(self.args)}"


class Processes:
    """Every process a test started; `close()` stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._http = httpx.AsyncClient(timeout=2.0, trust_env=False)

    # -- starting -------------------------------------------------------------------------

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_dir,
            )
        proc = Proc(name, args, popen, log_path)
        self.procs.append(proc)
        return proc

    async def start_api(
        self, env: dict[str, str], name: str = "api", port: int | None = None
    ) -> tuple[Proc, str]:
        port = port or free_port()
        args = [*vtwatch(), "--log-level", "warning", "api", "--host", "127.0.0.1"]
        proc = self.start(name, [*args, "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        await self.wait_http(proc, f"{url}/healthz")
        return proc, url

    def start_worker(self, env: dict[str, str], name: str = "worker") -> Proc:
        return self.start(name, [*vtwatch(), "worker"], env)

    async def start_simulator(self, name: str = "simulator", *options: str) -> tuple[Proc, str]:
        port = free_port()
        args = [*vtwatch(), "simulate", "--host", "127.0.0.1", "--port", str(port), *options]
        proc = self.start(name, args, {**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        await self.wait_http(proc, f"{url}/stats")
        return proc, url

    async def start_redis(
        self, port: int, data_dir: Path, name: str = "redis", *options: str
    ) -> Proc:
        """A redis-server of the test's own, with AOF on (`appendfsync everysec`); `options`
        are more `--name value` arguments."""
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(data_dir),
            "--save",
            "",
            *options,
        ]
        proc = self.start(name, args)
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)

        async def ready() -> bool:
            try:
                return bool(await client.ping())
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return False  # not listening yet, or still loading the AOF

        try:
            await poll_until(
                ready,
                timeout=STARTUP_TIMEOUT,
                what=f"{name} to answer PING",
                interval=0.05,
                alive=lambda: self._alive(proc),
            )
        finally:
            await client.aclose()
        return proc

    async def wait_http(self, proc: Proc, url: str) -> None:
        async def ready() -> bool:
            return (await self._http.get(url)).status_code == 200

        await poll_until(
            ready,
            timeout=STARTUP_TIMEOUT,
            what=f"{proc.name} at {url}",
            interval=0.05,
            alive=lambda: self._alive(proc),
        )

    # -- watching -------------------------------------------------------------------------

    @staticmethod
    def _alive(proc: Proc) -> None:
        if not proc.expect_exit and not proc.running():
            raise AssertionError(f"{proc.describe()} died; its log ends:\n{proc.tail()}")

    def check_alive(self) -> None:
        """Raise if a process the test did not stop has exited."""
        for proc in self.procs:
            self._alive(proc)

    # -- stopping -------------------------------------------------------------------------

    def report(self) -> str:
        parts = []
        for proc in self.procs:
            parts.append(
                f"===== {proc.describe()}\n----- log tail ({proc.log_path}):\n{proc.tail()}"
            )
        return "\n".join(parts)

    def stop_all(self) -> None:
        """SIGTERM everything at once, then SIGKILL whatever is left after the timeout."""
        for proc in self.procs:
            if proc.running():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                proc.popen.wait(timeout=STOP_TIMEOUT)

    async def aclose(self) -> None:
        await self._http.aclose()
        self.stop_all()
