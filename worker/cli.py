"""`vtwatch`: the command line of every process we ship (API, worker, simulator, demo)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from client import ClientError
from service import logs
from service.settings import Settings

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (markedly less CPU per request), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _api(args: argparse.Namespace) -> None:
    from service.api.app import create_app
    from service.api.auth import check_key_length, check_open_mode
    from service.api.server import serve

    settings = Settings()
    check_open_mode(settings, args.host)
    check_key_length(settings, args.host)
    serve(
        create_app(settings),
        args.host,
        args.port,
        log_level=args.log_level,
        grace_seconds=settings.shutdown_grace_seconds,
    )


def _worker(args: argparse.Namespace) -> None:
    from .process import ROLES, run_worker

    run_async(run_worker(Settings(), roles=args.only or ROLES))


def _dev(args: argparse.Namespace) -> None:
    from .dev import run_dev

    sys.exit(run_async(run_dev(Settings(), args.host, args.port, demo=args.demo)))


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
        choices=["debug", "info", "warning", "error"],
        help="also VTW_LOG_LEVEL (info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=_api)

    worker = commands.add_parser("worker", help="poll upstreams and deliver webhooks")
    worker.add_argument(
        "--only",
        action="append",
        choices=["poller", "dispatcher"],
        help="run only this part (repeatable); default: both",
    )
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
    logs.configure(args.log_level, args.log_format)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as exc:
        sys.exit(f"vtwatch: invalid configuration: {describe_invalid(exc)}")
    except ClientError as exc:
        sys.exit(f"vtwatch: invalid configuration: {exc}")


def describe_invalid(exc: ValidationError) -> str:
    """The settings that failed and why, without their values (they may be secrets)."""
    return "; ".join(
        f"VTW_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
