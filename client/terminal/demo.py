"""The demo: poll a (simulated) translation job with the client and print every update.

If nothing answers at the URL, a simulator is started in this process first.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..polling import StatusUpdate, VideoTranslationClient
from ..simulator import SimulatorConfig, create_app


async def _answers(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response,
        ):
            return response.status < 500
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


def _print_update(update: StatusUpdate) -> None:
    details = [f"attempt {update.attempt}", f"{update.elapsed:5.1f}s"]
    if update.progress is not None:
        details.append(f"progress {update.progress:.0f}%")
    if update.error:
        details.append(f"error: {update.error}")
    if update.next_poll_in is not None:
        details.append(f"next poll in {update.next_poll_in:.1f}s")
    print(f"  {update:<9} ({', '.join(details)})", flush=True)


async def run_demo(base_url: str, delay: float | None, seed: int | None) -> str:
    runner: web.AppRunner | None = None
    if not await _answers(base_url + "/status"):
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        config = SimulatorConfig(delay=delay, seed=seed, hints=True, eta_error=0.1)
        runner = web.AppRunner(create_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        print(f"Started a simulator at {base_url} (job takes {delay or '5-15'} s)")
    try:
        print(f"Polling {base_url}/status ...")
        async with VideoTranslationClient(base_url=base_url) as client:
            result = await client.poll(on_update=_print_update)
        print(
            f"Final status: {result.status} after {result.attempts} requests "
            f"and {result.elapsed:.1f}s"
        )
        return str(result.status)
    finally:
        if runner is not None:
            await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the upstream base URL")
    parser.add_argument(
        "--delay", type=float, default=None, help="job duration of a started simulator"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of a started simulator")


def main(args: argparse.Namespace) -> None:
    asyncio.run(run_demo(args.url.rstrip("/"), args.delay, args.seed))
