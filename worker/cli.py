"""`vtwatch`: the command line of every process we ship (API, worker, simulator, demo), and the
composition root: the module that imports both `service.api` and `worker` (each lazily, in the
command that runs it) and wires them into processes. Everywhere else the rooms import only
downwards: `worker` never imports `service.api`, and `service.api` never imports `worker`
(docs/architecture.md; tests/test_layout.py enforces it). One other module imports both:
`worker/dev.py`, for `vtwatch dev` (the API and a worker in one process, sharing one store).

A configuration that cannot work (a bad `VTW_` value, `VTW_REDIS_CLUSTER` against a Redis
without cluster mode, a refused bind, a port in use) ends the process before it serves, with
one line on stderr naming the variable, the problem and a value that would do, and exit status
78 (`EXIT_CONFIG`, sysexits' EX_CONFIG), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError

from client import ClientError
from service import logs
from service.settings import (
    REDIS_URL_EXAMPLE,
    ConfigurationError,
    Settings,
    example,
    parse_processes,
)

T = TypeVar("T")
EXIT_CONFIG = 78


class ConfigExit(SystemExit):
    """Exit with `EXIT_CONFIG`; its text is the line already printed on stderr."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_CONFIG)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (markedly less CPU per request), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def check_serving(settings: Settings, host: str, port: int, command: str) -> None:
    """What would stop the API right after start, checked before: keys, Redis mode, port."""
    from service.api.auth import check_key_length, check_open_mode
    from service.store.connection import check_mode

    for check in (check_open_mode, check_key_length):
        try:
            check(settings, host)
        except SystemExit as exc:  # their refusal, as a configuration error like the others
            raise ConfigurationError(str(exc.code)) from None
    run_async(check_mode(settings))
    check_port(host, port, command)


def check_port(host: str, port: int, command: str) -> None:
    """`ConfigurationError` when something listens on the port already, with the flag that
    picks another (other bind errors are uvicorn's to report)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return
            other = f"`vtwatch {command} --port {port + 1}`"
            if command == "dev":
                other = f"`make run PORT={port + 1}` or {other}"
            raise ConfigurationError(
                f"port {port} on {host} is in use: stop what listens there or pick another "
                f"port (e.g. {other})"
            ) from None


def _api(args: argparse.Namespace) -> None:
    from service.api.app import create_app
    from service.api.server import serve

    settings = Settings()
    workers = shared_store(process_count("--workers", args.workers), "--workers", settings)
    if args.fd is None:  # a child of `--workers N` serves what its supervisor checked and bound
        check_serving(settings, args.host, args.port, "api")
    if workers > 1:  # a supervisor of `workers` API processes on one socket
        from . import supervisor

        try:
            sock = supervisor.listen(args.host, args.port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc} "
                f"(e.g. `vtwatch api --port {args.port + 1}` or another --host)"
            ) from None
        sys.exit(
            supervisor.Supervisor(
                workers,
                lambda index: supervisor.api_command(
                    index,
                    host=args.host,
                    port=args.port,
                    fd=sock.fileno(),
                    log_level=args.log_level,
                    log_format=args.log_format,
                ),
                grace_seconds=settings.shutdown_grace_seconds,
                pass_fds=[sock.fileno()],
                what="api",
            ).run()
        )
    if args.process_index is not None:
        from .supervisor import tag_logs

        tag_logs(args.process_index)
    serve(
        create_app(settings),
        args.host,
        args.port,
        log_level=args.log_level,
        grace_seconds=settings.shutdown_grace_seconds,
        fd=args.fd,
    )


def _worker(args: argparse.Namespace) -> None:
    from service.store.connection import check_mode

    from . import supervisor
    from .process import ROLES, run_worker

    settings = Settings()
    count = worker_processes(args.processes, settings)
    run_async(check_mode(settings))
    if count > 1:  # a supervisor of `count` workers (worker/supervisor.py); else none at all
        base = settings.metrics_port
        sys.exit(
            supervisor.Supervisor(
                count,
                lambda index: supervisor.worker_command(
                    index, log_level=args.log_level, log_format=args.log_format, only=args.only
                ),
                lambda index: supervisor.worker_env(index, base),
                grace_seconds=settings.shutdown_grace_seconds,
            ).run()
        )
    if args.process_index is not None:
        supervisor.tag_logs(args.process_index)
    run_async(run_worker(settings, roles=args.only or ROLES))


def process_count(option: str, flag: str | None) -> int:
    """`--processes` or `--workers` as a count (`auto`: the cores)."""
    from .supervisor import resolve

    if flag is None:
        return 1
    try:
        return resolve(parse_processes(flag))
    except ValueError as exc:
        raise ConfigurationError(f"{option}: {exc} (e.g. {option} auto)") from None


def shared_store(count: int, option: str, settings: Settings) -> int:
    """`count` if its processes share a store: several need Redis (embedded: one each)."""
    if count > 1 and settings.redis_url is None:
        raise ConfigurationError(
            f"{option} {count}: processes share one store, and without VTW_REDIS_URL each would "
            f"have an embedded one of its own: set it (e.g. VTW_REDIS_URL={REDIS_URL_EXAMPLE}) "
            "or run one process"
        )
    return count


def worker_processes(flag: str | None, settings: Settings) -> int:
    """`--processes` (else `VTW_WORKER_PROCESSES`) as a count, `auto` resolved; the metrics
    ports it needs must exist."""
    from .supervisor import resolve

    if flag is None:
        count = resolve(settings.worker_processes)
    else:
        count = process_count("--processes", flag)
    shared_store(count, "--processes", settings)
    last = settings.metrics_port + count - 1
    if settings.metrics_port and last > 65535:
        raise ConfigurationError(
            f"VTW_METRICS_PORT: {count} worker processes serve metrics on it and the "
            f"{count - 1} ports above, up to {last}, past 65535 (e.g. VTW_METRICS_PORT=9464)"
        )
    return count


def _dev(args: argparse.Namespace) -> None:
    from .dev import run_dev

    settings = Settings()
    check_serving(settings, args.host, args.port, "dev")
    sys.exit(run_async(run_dev(settings, args.host, args.port, demo=args.demo)))


def _simulate(args: argparse.Namespace) -> None:
    from client import simulator

    simulator.run(simulator.config_from_args(args), args.host, args.port)


def _demo(args: argparse.Namespace) -> None:
    from client.terminal import demo

    demo.main(args)


def _watch(args: argparse.Namespace) -> None:
    from client.terminal import watch

    watch.main(args)


def _follow(args: argparse.Namespace) -> None:
    from client.terminal import follow

    follow.main(args)


def build_parser() -> argparse.ArgumentParser:
    from client import simulator
    from client.terminal import demo, follow, watch

    parser = argparse.ArgumentParser(
        prog="vtwatch", description="Know when long-running translation jobs finish."
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("VTW_LOG_FORMAT") or None,
        choices=logs.FORMATS,
        help="also VTW_LOG_FORMAT (text on a terminal, else json)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VTW_LOG_LEVEL", "info").lower(),
        choices=logs.LEVELS,
        help="also VTW_LOG_LEVEL (info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers",
        metavar="N",
        help="API processes on one port under one supervisor, or auto: one per core (1)",
    )
    api.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a supervisor's socket
    api.add_argument("--process-index", type=int, help=argparse.SUPPRESS)
    api.set_defaults(func=_api)

    worker = commands.add_parser("worker", help="poll upstreams and deliver webhooks")
    worker.add_argument(
        "--only",
        action="append",
        choices=["poller", "dispatcher"],
        help="run only this part (repeatable); default: both",
    )
    worker.add_argument(
        "--processes",
        metavar="N",
        help="worker processes under one supervisor, or auto: one per core "
        "(also VTW_WORKER_PROCESSES; 1)",
    )
    worker.add_argument("--process-index", type=int, help=argparse.SUPPRESS)  # a supervisor's child
    worker.set_defaults(func=_worker)

    dev = commands.add_parser(
        "dev", help="API + worker in one process (embedded store if no Redis)"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--demo",
        action="store_true",
        help="also start a simulator on :5000 and show a first watch from pending to completed",
    )
    dev.set_defaults(func=_dev)

    sim = commands.add_parser(
        "simulate", help="run the upstream simulator (a fake translation server)"
    )
    simulator.add_arguments(sim)
    sim.set_defaults(func=_simulate)

    dem = commands.add_parser("demo", help="poll a simulated job with the client, printing updates")
    demo.add_arguments(dem)
    dem.set_defaults(func=_demo)

    wat = commands.add_parser("watch", help="poll one status URL from the terminal")
    watch.add_arguments(wat)
    wat.set_defaults(func=_watch)

    fol = commands.add_parser("follow", help="follow a watch of the service to its end")
    follow.add_arguments(fol)
    fol.set_defaults(func=_follow)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        check_logging(args)
        logs.configure(args.log_level, args.log_format)
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as exc:
        _refuse(describe_invalid(exc))
    except (ConfigurationError, ClientError) as exc:
        _refuse(str(exc))


def _refuse(problem: str) -> NoReturn:
    message = f"vtwatch: invalid configuration: {problem}"
    print(message, file=sys.stderr, flush=True)
    raise ConfigExit(message)


def check_logging(args: argparse.Namespace) -> None:
    """VTW_LOG_LEVEL and VTW_LOG_FORMAT are argparse defaults, which it does not check."""
    checks: list[tuple[str, str | None, Sequence[str], str]] = [
        ("VTW_LOG_LEVEL", args.log_level, logs.LEVELS, "info"),
        ("VTW_LOG_FORMAT", args.log_format, logs.FORMATS, "json"),
    ]
    for name, value, allowed, good in checks:
        if value is not None and value not in allowed:
            raise ConfigurationError(
                f"{name}: {value!r} is not one of {', '.join(allowed)} (e.g. {name}={good})"
            )


def describe_invalid(exc: ValidationError) -> str:
    """The settings that failed and why, each with a good value, without the values given
    (they may be secrets): one line."""
    problems: dict[str, list[str]] = {}
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        msg = error["msg"].removeprefix("Value error, ")
        if len(loc) > 1 and isinstance(loc[1], int):
            msg = f"item {loc[1] + 1}: {msg}"
        problems.setdefault(str(loc[0]) if loc else "", []).append(msg)
    return "; ".join(_describe(field, msgs) for field, msgs in problems.items())


def _describe(field: str, msgs: list[str]) -> str:
    text = ", ".join(dict.fromkeys(msgs))
    if not field:  # a rule over several settings: its message names them
        return text
    name = f"VTW_{field.upper()}"
    good = example(field)
    if good is not None and "e.g." not in text:
        text += f" (e.g. {name}={good})"
    return f"{name}: {text}"
