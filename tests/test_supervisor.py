"""The supervisor of `vtwatch worker --processes N` and `vtwatch api --workers N`
(worker/supervisor.py), with tiny Python children instead of workers: restarts with backoff,
giving up on a child that keeps dying, a configuration refused, SIGTERM passed on and stragglers
killed, no orphan when the supervisor is SIGKILLed; and the command line's checks of N."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service import logs
from service.settings import Settings, parse_processes
from tests.e2e.procs import vtwatch
from worker import supervisor
from worker.cli import EXIT_CONFIG
from worker.supervisor import Policy, Supervisor

FAST = Policy(backoff_initial=0.05, backoff_max=0.2, stop_margin=0.5, tick=0.01)
# A child that notes its start (`<dir>/<index>.<pid>`), then runs `body`.
PRELUDE = (
    "import os, signal, sys, time\n"
    "open(os.path.join({dir!r}, '{index}.' + str(os.getpid())), 'w').close()\n"
)
SLEEPER = "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(60)\n"


def children(tmp_path: Path, body: Callable[[int], str]) -> Callable[[int], list[str]]:
    def command(index: int) -> list[str]:
        return [sys.executable, "-c", PRELUDE.format(dir=str(tmp_path), index=index) + body(index)]

    return command


def starts(tmp_path: Path, index: int) -> list[int]:
    return [int(p.suffix[1:]) for p in tmp_path.glob(f"{index}.*")]


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stop_when(sup: Supervisor, check: Callable[[], bool], sig: int = signal.SIGTERM) -> None:
    """Call `sup.request_stop(sig)` from a thread once `check()` holds."""

    def watch() -> None:
        wait_for(check)
        sup.request_stop(sig)

    threading.Thread(target=watch, daemon=True).start()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_child_that_dies_is_restarted_then_all_drain_on_sigterm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Child 0 exits with status 3 the first time only; child 1 runs until told to stop.
    def body(index: int) -> str:
        first = f"len([p for p in os.listdir({str(tmp_path)!r}) if p.startswith('0.')]) == 1"
        crash = f"if {first}: sys.exit(3)\n" if index == 0 else ""
        return crash + SLEEPER

    sup = Supervisor(2, children(tmp_path, body), grace_seconds=1, policy=FAST)
    stop_when(sup, lambda: len(starts(tmp_path, 0)) == 2 and len(starts(tmp_path, 1)) == 1)
    caplog.set_level(logging.INFO, "worker.supervisor")
    assert sup.run() == 0
    assert len(starts(tmp_path, 0)) == 2 and len(starts(tmp_path, 1)) == 1
    restarts = [r for r in caplog.records if "restarting it in" in r.getMessage()]
    assert len(restarts) == 1 and restarts[0].levelno == logging.WARNING
    assert "worker process 0 (pid " in restarts[0].getMessage()
    assert "exited with status 3" in restarts[0].getMessage()
    assert all(gone(pid) for index in (0, 1) for pid in starts(tmp_path, index))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # its handlers are undone


def test_backoff_doubles_to_its_cap_and_a_child_that_keeps_dying_ends_the_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor(
        2,
        children(tmp_path, lambda index: "sys.exit(1)\n" if index == 0 else SLEEPER),
        grace_seconds=1,
        policy=FAST,
    )
    caplog.set_level(logging.INFO, "worker.supervisor")
    started = time.monotonic()
    assert sup.run() == supervisor.EXIT_FAILING
    assert time.monotonic() - started < 5
    assert len(starts(tmp_path, 0)) == FAST.max_deaths
    delays = [r.args[-1] for r in caplog.records if "restarting it in" in r.getMessage()]
    assert delays == [0.05, 0.1, 0.2, 0.2]  # type: ignore[comparison-overlap]
    assert any("keeps dying (5 times" in r.getMessage() for r in caplog.records)
    # ...and the healthy child was stopped with it.
    assert all(gone(pid) for pid in starts(tmp_path, 1))


def test_a_child_refusing_its_configuration_is_not_restarted(tmp_path: Path) -> None:
    body = f"sys.exit({EXIT_CONFIG})\n"
    sup = Supervisor(1, children(tmp_path, lambda index: body), grace_seconds=1, policy=FAST)
    assert sup.run() == EXIT_CONFIG
    assert len(starts(tmp_path, 0)) == 1


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stubborn = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    sup = Supervisor(
        2,
        children(tmp_path, lambda index: stubborn if index == 1 else SLEEPER),
        grace_seconds=0.3,
        policy=FAST,
    )
    stop_when(sup, lambda: bool(starts(tmp_path, 0) and starts(tmp_path, 1)))
    caplog.set_level(logging.INFO, "worker.supervisor")
    assert sup.run() == supervisor.EXIT_FAILING  # not a clean drain
    assert any(
        "worker process 1" in r.getMessage() and "killing it" in r.getMessage()
        for r in caplog.records
    )
    assert all(gone(pid) for index in (0, 1) for pid in starts(tmp_path, index))


def test_a_child_ending_by_the_signal_it_was_passed_drained_cleanly(tmp_path: Path) -> None:
    """uvicorn (an API child) ends by raising the SIGTERM it handled."""
    body = (
        "def reraise(*args):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "signal.signal(signal.SIGTERM, reraise)\n"
        "time.sleep(60)\n"
    )
    sup = Supervisor(1, children(tmp_path, lambda index: body), grace_seconds=1, policy=FAST)
    stop_when(sup, lambda: bool(starts(tmp_path, 0)))
    assert sup.run() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_do_not_outlive_a_sigkilled_supervisor(tmp_path: Path) -> None:
    child = PRELUDE.format(dir=str(tmp_path), index=0) + SLEEPER
    script = (
        "import sys\n"
        "from worker.supervisor import Supervisor\n"
        f"sys.exit(Supervisor(1, lambda i: [sys.executable, '-c', {child!r}], "
        "grace_seconds=1).run())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: bool(starts(tmp_path, 0)))
    finally:
        parent.kill()
        parent.wait()
    (pid,) = starts(tmp_path, 0)
    wait_for(lambda: gone(pid), timeout=5)


def test_child_logs_carry_their_index(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for fmt in ("json", "text"):
            logs.configure("info", fmt)
            supervisor.tag_logs(3)
            logging.getLogger("worker.test").info("hello", extra={"watch_id": "w1"})
        lines = capsys.readouterr().err.strip().splitlines()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    event = json.loads(lines[0])
    assert event["process"] == 3 and event["msg"] == "hello" and event["watch_id"] == "w1"
    assert lines[1].endswith("hello [watch_id=w1] [process=3]")


def test_each_worker_child_has_its_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert supervisor.worker_env(0, 9464)["VTW_METRICS_PORT"] == "9464"
    assert supervisor.worker_env(3, 9464)["VTW_METRICS_PORT"] == "9467"
    monkeypatch.setenv("VTW_METRICS_PORT", "0")
    assert supervisor.worker_env(3, 0)["VTW_METRICS_PORT"] == "0"  # off stays off
    command = supervisor.worker_command(2, log_level="debug", log_format=None, only=["poller"])
    assert command[-7:] == [
        "worker",
        "--only",
        "poller",
        "--processes",
        "1",
        "--process-index",
        "2",
    ]


def test_processes_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_processes("auto") == "auto" and parse_processes(" 4 ") == 4
    for bad in ("0", "-1", "1.5", "many", "", "1025", True):
        with pytest.raises(ValueError):
            parse_processes(bad)
    assert supervisor.resolve("auto") == supervisor.cores() >= 1
    monkeypatch.setenv("VTW_WORKER_PROCESSES", "auto")
    assert Settings().worker_processes == "auto"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["worker", "--processes", "0"], {}, "--processes: must be a whole number"),
        (["worker"], {"VTW_WORKER_PROCESSES": "lots"}, "VTW_WORKER_PROCESSES: must be"),
        (["worker", "--processes", "2"], {"VTW_METRICS_PORT": "65535"}, "VTW_METRICS_PORT:"),
        (["api", "--workers", "none", "--port", "1"], {}, "--workers: must be a whole number"),
        (["api", "--workers", "2", "--port", "1"], {}, "--workers 2: processes share one store"),
    ],
)
def test_a_bad_count_is_one_line_and_exit_78(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VTW_", "COVERAGE_"))}
    if "share one store" not in needle:
        base["VTW_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached: refused before
    result = subprocess.run(
        [*vtwatch(), *args],
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vtwatch: invalid configuration: ") and needle in line, line
