"""`vtwatch watch <status_url>`: poll one job from the terminal, showing live progress.

Exit code: 0 completed, 1 error, 2 timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .backoff import BACKOFF_FACTOR, INITIAL_WAIT_TIME, JITTER, MAX_INTERVAL
from .polling import StatusUpdate, VideoTranslationClient
from .upstream import Status

EXIT_CODES = {Status.COMPLETED: 0, Status.ERROR: 1, Status.TIMEOUT: 2}


def _show(update: StatusUpdate) -> None:
    progress = f" {update.progress:5.1f}%" if update.progress is not None else ""
    eta = f" eta {update.eta_seconds:.0f}s" if update.eta_seconds is not None else ""
    error = f" ({update.error})" if update.error else ""
    print(f"[{update.elapsed:7.1f}s] #{update.attempt} {update}{progress}{eta}{error}", flush=True)


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


async def watch(args: argparse.Namespace) -> Status:
    client = VideoTranslationClient(
        args.status_url,
        max_attempts=args.max_attempts,
        max_wait_time=args.max_wait_time,
        initial_wait_time=args.initial_wait_time,
        backoff_factor=args.backoff_factor,
        jitter=args.jitter,
        max_interval=args.max_interval,
        status_path="",
    )
    async with client:
        return await client.get_status(on_update=_show)


def main(args: argparse.Namespace) -> None:
    status = asyncio.run(watch(args))
    print(f"final: {status}")
    sys.exit(EXIT_CODES[status])
