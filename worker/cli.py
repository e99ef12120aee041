"""`vtwatch`: the command line of every process we ship (API, worker, simulator, demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _simulate(args: argparse.Namespace) -> None:
    from client import simulator

    simulator.run(simulator.config_from_args(args), args.host, args.port)


def _demo(args: argparse.Namespace) -> None:
    from client import demo

    demo.main(args)


def _watch(args: argparse.Namespace) -> None:
    from client import watch

    watch.main(args)


def build_parser() -> argparse.ArgumentParser:
    from client import demo, simulator, watch

    parser = argparse.ArgumentParser(
        prog="vtwatch", description="Know when long-running translation jobs finish."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
