"""Helpers for benchmarks that start real processes on loopback: ports, start/stop, CPU time.

Every process is started by us, stopped by its own pid (SIGTERM, then SIGKILL after a grace
period), and logs to a file in a temporary folder so a failure can be shown afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def tree_cpu_seconds(pid: int) -> float | None:
    """`cpu_seconds` of a live process plus those of its live descendants (a supervisor and its
    workers), else None."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    for child in descendants(pid):
        own += cpu_seconds(child) or 0.0
    return own


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (Linux /proc/<pid>/task/*/children)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def machine_busy() -> float | None:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait), else None."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / _TICKS


class Proc:
    """One child process with its output in `log`."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float | None:
        """CPU seconds of the process and its descendants (`vtwatch worker --processes N`)."""
        return tree_cpu_seconds(self.pid)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            if await self.wait(grace) is None:
                self.popen.kill()
        return await asyncio.to_thread(self.popen.wait)

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after `timeout` seconds."""
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            return None


async def wait_http(proc: Proc, url: str, timeout: float = 15.0) -> None:
    """Until `GET url` answers 200 (or the process died, or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer {url} in {timeout:g} s")
            await asyncio.sleep(0.05)


async def wait_redis(proc: Proc, url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = aioredis.Redis.from_url(url)
    try:
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                if await client.ping():
                    return
            except (aioredis.ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer PING in {timeout:g} s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def start_redis(folder: Path) -> tuple[Proc, str]:
    """A private, non-persistent `redis-server` on a free loopback port."""
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]
    return Proc("redis-server", argv, folder / "redis.log"), f"redis://127.0.0.1:{port}/0"


def vtwatch(*args: str) -> list[str]:
    """The argv of the `vtwatch` command installed beside this Python."""
    return [str(Path(sys.executable).with_name("vtwatch")), *args]


def start_simulator(folder: Path, *options: str) -> tuple[Proc, str]:
    """The upstream simulator (`vtwatch simulate`, more `options` if given) on a free loopback
    port, and its base URL."""
    port = free_port()
    argv = vtwatch("simulate", "--host", "127.0.0.1", "--port", str(port), *options)
    proc = Proc("simulator", argv, folder / "simulator.log", child_env({}))
    return proc, f"http://127.0.0.1:{port}"


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any `VTW_*` variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTW_")}
    env.update(extra)
    return env
