"""`vtwatch worker --processes N`: one supervisor process and N worker processes, to use every
core of one machine (docs/scale.md). With N = 1 there is no supervisor: `vtwatch worker` is the
worker.

* **Children.** Each child is a whole `vtwatch worker --processes 1` of its own (the same
  interpreter and environment, `--process-index I` for I in 0..N-1): its own roster entry (every
  worker picks a random id), its own leases, and its own metrics port, `VTW_METRICS_PORT + I`
  (off when `VTW_METRICS_PORT` is 0). Its log lines carry `process: I`. Children run in a process
  group of their own, so a terminal's ^C reaches the supervisor only, which passes it on; on
  Linux each child gets SIGTERM (a graceful drain) should the supervisor die, even by SIGKILL.
* **Restarts.** A child that exits is restarted after a backoff (1 s, doubling to 30 s; back to 1 s
  once a child has lived 60 s), logged at warning with its exit status or signal. A child that
  dies `MAX_DEATHS` times within `DEATH_WINDOW` seconds keeps dying: the supervisor stops the
  others and exits 1. A child that refuses its configuration (exit 78) is not restarted either:
  the supervisor stops the others and exits 78.
* **Shutdown.** SIGTERM or SIGINT is passed on to every child (a second one too: a worker takes
  it as "exit now"); children get `VTW_SHUTDOWN_GRACE_SECONDS` plus `STOP_MARGIN` to drain, then
  SIGKILL. The supervisor exits 0 when every child drained.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

logger = logging.getLogger(__name__)

EXIT_CONFIG = 78  # worker/cli.py's: a child that refuses its configuration is not restarted
EXIT_FAILING = 1
PR_SET_PDEATHSIG = 1


def cores() -> int:
    """The cores this process may run on (`auto`)."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()  # 3.13 has process_cpu_count
    if count is None and hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    return max(1, count or 1)


def resolve(processes: int | Literal["auto"]) -> int:
    return cores() if processes == "auto" else processes


@dataclass(frozen=True)
class Policy:
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 60.0  # a child that lived this long starts its backoff afresh
    max_deaths: int = 5  # ...deaths of one child within `death_window`: it keeps dying
    death_window: float = 60.0
    stop_margin: float = 5.0  # beyond the grace period, before stragglers are killed
    tick: float = 0.05


@dataclass
class Child:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = 0.0
    deaths: collections.deque[float] = field(default_factory=collections.deque)

    def running(self) -> bool:
        return self.popen is not None and self.popen.returncode is None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Runs `command(i)` for i in 0..count-1 with `env(i)` until stopped; `run()` returns the
    exit status. Synchronous and single-threaded (the death signal is tied to the thread that
    started a child)."""

    def __init__(
        self,
        count: int,
        command: Callable[[int], Sequence[str]],
        env: Callable[[int], Mapping[str, str]] | None = None,
        *,
        grace_seconds: float,
        policy: Policy | None = None,
        pass_fds: Sequence[int] = (),
        what: str = "worker",
    ) -> None:
        self.children = [Child(index) for index in range(count)]
        self.command = command
        self.env = env
        self.pass_fds = tuple(pass_fds)
        self.what = what  # "worker process 1 started"
        self.grace_seconds = grace_seconds
        self.policy = policy or Policy()
        for child in self.children:
            child.delay = self.policy.backoff_initial
        self._signals: list[int] = []
        self._preexec = _die_with_parent(os.getpid())

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """What SIGTERM and SIGINT do (safe from a signal handler or another thread)."""
        self._signals.append(sig)

    def run(self) -> int:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(sig: int, frame: FrameType | None) -> None:
            self.request_stop(sig)

        for sig in previous:
            signal.signal(sig, on_signal)
        try:
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the loop ---------------------------------------------------------------------------

    def _supervise(self) -> int:
        logger.info(
            "supervising %d %s processes (pid %d)", len(self.children), self.what, os.getpid()
        )
        for child in self.children:
            self._start(child)
        while not self._signals:
            now = time.monotonic()
            for child in self.children:
                if child.popen is not None and child.popen.poll() is not None:
                    verdict = self._died(child, child.popen.returncode, now)
                    if verdict is not None:
                        self._drain(signal.SIGTERM)
                        return verdict
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            time.sleep(self.policy.tick)
        sig = self._signals.pop(0)
        logger.info("%s: passing it on to the %s processes", signal.Signals(sig).name, self.what)
        return self._drain(sig)

    def _start(self, child: Child) -> None:
        env = None if self.env is None else dict(self.env(child.index))
        child.popen = subprocess.Popen(
            list(self.command(child.index)),
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=self._preexec,  # single-threaded: safe
            pass_fds=self.pass_fds,
            process_group=0,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("%s process %d started (pid %d)", self.what, child.index, child.popen.pid)

    def _died(self, child: Child, code: int, now: float) -> int | None:
        """Note a child's death and schedule its restart; the supervisor's exit status if it
        must give up instead."""
        assert child.popen is not None
        pid, lived = child.popen.pid, now - child.started_at
        child.popen = None
        how = describe_exit(code)
        if code == EXIT_CONFIG:
            logger.error(
                "%s process %d (pid %d) %s: its configuration cannot work; stopping",
                self.what,
                child.index,
                pid,
                how,
            )
            return EXIT_CONFIG
        window = self.policy.death_window
        child.deaths.append(now)
        while child.deaths and child.deaths[0] < now - window:
            child.deaths.popleft()
        if len(child.deaths) >= self.policy.max_deaths:
            logger.error(
                "%s process %d keeps dying (%d times within %.0fs, last: pid %d %s); "
                "stopping the others and exiting",
                self.what,
                child.index,
                len(child.deaths),
                window,
                pid,
                how,
            )
            return EXIT_FAILING
        if lived >= self.policy.stable_after:
            child.delay = self.policy.backoff_initial
        logger.warning(
            "%s process %d (pid %d) %s after %.1fs; restarting it in %.1fs",
            self.what,
            child.index,
            pid,
            how,
            lived,
            child.delay,
        )
        child.restart_at = now + child.delay
        child.delay = min(child.delay * 2, self.policy.backoff_max)
        return None

    def _drain(self, sig: int) -> int:
        """Pass `sig` on to every child, wait for them (the grace period and a margin), kill
        the rest; 0 when every child drained (exited 0, or by `sig` once it had handled it)."""
        running = [child for child in self.children if child.running()]
        for child in running:
            _send(child, sig)
        deadline = time.monotonic() + self.grace_seconds + self.policy.stop_margin
        clean = True
        while running and time.monotonic() < deadline:
            for again in self._signals:  # a second signal: the workers exit at once
                for child in running:
                    _send(child, again)
            self._signals.clear()
            time.sleep(self.policy.tick)
            for child in [child for child in running if child.popen.poll() is not None]:  # type: ignore[union-attr]
                assert child.popen is not None
                code = child.popen.returncode
                drained = code in (0, -sig)  # uvicorn ends by raising the signal it handled
                clean = clean and drained
                log = logger.info if drained else logger.warning
                log(
                    "%s process %d (pid %d) %s",
                    self.what,
                    child.index,
                    child.popen.pid,
                    describe_exit(code),
                )
                running.remove(child)
        for child in running:
            assert child.popen is not None
            logger.warning(
                "%s process %d (pid %d) still running %.0fs after %s: killing it",
                self.what,
                child.index,
                child.popen.pid,
                self.grace_seconds + self.policy.stop_margin,
                signal.Signals(sig).name,
            )
            with contextlib.suppress(ProcessLookupError):
                child.popen.kill()
            child.popen.wait()
            clean = False
        logger.info("%s processes stopped", self.what)
        return 0 if clean else EXIT_FAILING


def _send(child: Child, sig: int) -> None:
    if child.popen is not None:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(sig)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """On Linux, what makes a child get SIGTERM when the supervisor dies (prctl's
    PR_SET_PDEATHSIG, kept across exec), and exit at once if it already has."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


# -- the worker's children ----------------------------------------------------------------------


def vtwatch_command(log_level: str, log_format: str | None) -> list[str]:
    """`vtwatch` with the supervisor's logging options, run by this interpreter (the same code)."""
    command = [
        sys.executable,
        "-c",
        "from worker.cli import main; main()",
        "--log-level",
        log_level,
    ]
    if log_format is not None:
        command += ["--log-format", log_format]
    return command


def worker_command(
    index: int, *, log_level: str, log_format: str | None, only: Sequence[str] | None
) -> list[str]:
    """`vtwatch worker` as child `index` (this interpreter, the same code)."""
    command = [*vtwatch_command(log_level, log_format), "worker"]
    for role in only or ():
        command += ["--only", role]
    return [*command, "--processes", "1", "--process-index", str(index)]


def worker_env(index: int, metrics_port: int) -> dict[str, str]:
    """This process's environment, with child `index`'s metrics port (base + index; 0 stays
    off)."""
    env = dict(os.environ)
    env["VTW_WORKER_PROCESSES"] = "1"
    if metrics_port:
        env["VTW_METRICS_PORT"] = str(metrics_port + index)
    return env


def tag_logs(index: int) -> None:
    """Every line this process logs carries `process: index` (JSON) or `[process=index]`."""
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.formatter is not None:
            handler.setFormatter(_Indexed(handler.formatter, index))


class _Indexed(logging.Formatter):
    def __init__(self, inner: logging.Formatter, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.index = index

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        if line.startswith("{") and line.endswith("}"):  # one JSON object (service/logs.py)
            return f"{line[:-1]}, {json.dumps('process')}: {self.index}}}"
        return f"{line} [process={self.index}]"


# -- the API's children -------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound once here and inherited by every child (as uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def api_command(
    index: int, *, host: str, port: int, fd: int, log_level: str, log_format: str | None
) -> list[str]:
    """`vtwatch api` as child `index`, serving the inherited socket `fd`."""
    return [
        *vtwatch_command(log_level, log_format),
        "api",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--fd",
        str(fd),
        "--process-index",
        str(index),
    ]
