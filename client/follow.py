"""`vtwatch follow WATCH_ID`: follow a watch of the service through its event stream, a line per
event. Exit status: 0 completed, 1 error, 2 timeout, 3 cancelled, 4 the API could not be reached
or refused (unknown watch, bad key)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .service import Event, ServiceAPIError, WatchServiceClient

EXIT_CODES = {"completed": 0, "error": 1, "timeout": 2, "cancelled": 3}
UNREACHABLE = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("watch_id", help="the id of a watch of the service")
    parser.add_argument(
        "--api",
        default=os.environ.get("VTW_API_URL", "http://127.0.0.1:8000"),
        help="the service's base URL (VTW_API_URL; http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("VTW_API_KEY"),
        help="an API key (VTW_API_KEY); none for a service running open",
    )


def describe(event: Event) -> str:
    watch = event.watch
    progress = f" {watch.progress:5.1f}%" if watch.progress is not None else ""
    error = f" ({watch.last_error})" if watch.last_error else ""
    reason = f" - {watch.reason}" if watch.reason else ""
    return f"{event.name:5} {watch.state} attempts={watch.attempts}{progress}{error}{reason}"


async def follow(args: argparse.Namespace) -> int:
    async with WatchServiceClient(args.api, args.key) as service:
        try:
            async for event in service.events(args.watch_id):
                print(describe(event), flush=True)
                if event.name == "state" and event.watch.ended:
                    return EXIT_CODES[event.watch.state]
        except ServiceAPIError as exc:
            print(f"vtwatch follow: {exc}", file=sys.stderr)
            return UNREACHABLE
    return UNREACHABLE


def main(args: argparse.Namespace) -> None:
    sys.exit(asyncio.run(follow(args)))
