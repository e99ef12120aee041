"""`vtwatch watch <status_url>`: poll one job from the terminal, showing live progress.

Exit code: 0 completed, 1 error, 2 timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..backoff import BACKOFF_FACTOR, INITIAL_WAIT_TIME, JITTER, MAX_INTERVAL
from ..errors import ConfigurationError
from ..polling import StatusUpdate, VideoTranslationClient
from ..presets import DEFAULT_PRESET, PRESETS
from ..upstream import Status, Upstream
from .display import Display

EXIT_CODES = {Status.COMPLETED: 0, Status.ERROR: 1, Status.TIMEOUT: 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("status_url", help="the job's full status URL")
    parser.add_argument("--max-wait-time", type=float, default=3600.0, help="seconds (3600)")
    parser.add_argument("--max-attempts", type=int, default=None, help="no limit by default")
    parser.add_argument(
        "--max-interval", type=float, default=MAX_INTERVAL, help=f"delay cap, s ({MAX_INTERVAL:g})"
    )
    parser.add_argument("--initial-wait-time", type=float, default=INITIAL_WAIT_TIME)
    parser.add_argument("--backoff-factor", type=float, default=BACKOFF_FACTOR)
    parser.add_argument("--jitter", type=float, default=JITTER)
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=sorted(PRESETS),
        help=f"how to read the job API's answers (status rules; {DEFAULT_PRESET})",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header every poll sends, e.g. an API key (repeatable)",
    )


def parse_headers(lines: list[str]) -> dict[str, str]:
    """`--header 'Name: value'` lines as a dict; ConfigurationError names a bad one (by name)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ConfigurationError("--header takes 'Name: value' (e.g. 'X-Api-Key: ...')")
        headers[name.strip()] = value.strip()
    return headers


async def watch(args: argparse.Namespace, display: Display) -> Status:
    client = VideoTranslationClient(
        args.status_url,
        max_attempts=args.max_attempts,
        max_wait_time=args.max_wait_time,
        initial_wait_time=args.initial_wait_time,
        backoff_factor=args.backoff_factor,
        jitter=args.jitter,
        max_interval=args.max_interval,
        status_path="",
        upstream=Upstream(preset=args.preset, headers=parse_headers(args.header)),
    )

    def show(update: StatusUpdate) -> None:
        if str(update) in EXIT_CODES:  # the poll that ended it: `final` below shows the end, once
            return
        display.update(
            str(update), update.attempt, update.progress, update.next_poll_in, update.error
        )

    async with client:
        result = await client.poll(on_update=show)
    display.final(str(result.status), result.attempts)
    return result.status


def main(args: argparse.Namespace) -> None:
    with Display(f"watching {args.status_url}") as display:
        status = asyncio.run(watch(args, display))
    print(f"final: {status}")
    sys.exit(EXIT_CODES[status])
