"""`vtwatch follow WATCH_ID`: follow a watch of the service through its event stream (a live
progress bar on a terminal, a line per event otherwise). Exit status: 0 completed, 1 error,
2 timeout, 3 cancelled, 4 the API could not be reached or refused (unknown watch, bad key), or
its event stream kept ending with nothing new, or broke the SDK's limits."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime

from ..service import ServiceAPIError, WatchServiceClient
from .display import Display

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


async def follow(args: argparse.Namespace, display: Display) -> int:
    async with WatchServiceClient(args.api, args.key) as service:
        try:
            async for event in service.events(args.watch_id):
                watch = event.watch
                if watch.ended:  # the poll that ended it, then the end: shown once, with why
                    if event.name != "state":
                        continue
                    why = watch.reason or watch.last_error
                    display.final(watch.state, watch.attempts, watch.progress, note=why)
                    return EXIT_CODES[watch.state]
                display.update(
                    watch.state,
                    watch.attempts,
                    watch.progress,
                    seconds_until(watch.next_poll_at),
                    watch.last_error,
                )
        except ServiceAPIError as exc:
            print(f"vtwatch follow: {exc}", file=sys.stderr)
            return UNREACHABLE
    return UNREACHABLE


def seconds_until(moment: str | None) -> float | None:
    if moment is None:
        return None
    when = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def main(args: argparse.Namespace) -> None:
    with Display(f"following {args.watch_id}") as display:
        code = asyncio.run(follow(args, display))
    sys.exit(code)
