"""The worker process: poller and housekeeping, with graceful shutdown.

Shutdown order: a signal sets `stopping`; claiming stops; polls in flight get the grace period;
the rest are cancelled (their leases lapse and other workers take over); pools close. A second
SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import aiohttp
import redis.asyncio as aioredis

from service.connection import connect
from service.settings import Settings
from service.store import Store

from .poller import Poller
from .retry import STORE_ERRORS

logger = logging.getLogger(__name__)
SWEEP_INTERVAL = 60.0


class Worker:
    def __init__(self, settings: Settings, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self._redis = redis
        self.stopping = asyncio.Event()
        self.poller: Poller | None = None

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self.stopping.is_set():
            logger.info(
                "stopping: no new claims; %.0fs grace", self.settings.shutdown_grace_seconds
            )
        self.stopping.set()
        if self.poller is not None:
            self.poller.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self.stopping.is_set():
                logger.warning("second signal: exiting now")
                os._exit(1)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

    async def run(self) -> None:
        redis = self._redis if self._redis is not None else connect(self.settings)
        store = Store(
            redis,
            namespace=self.settings.namespace,
            retention_seconds=self.settings.retention_seconds,
        )
        connector = aiohttp.TCPConnector(limit=self.settings.worker_concurrency)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self.poller = Poller(store, session, self.settings)
                if self.stopping.is_set():
                    self.poller.stopping.set()
                sweeper = asyncio.create_task(self._sweep(store))
                try:
                    await self.poller.run()
                    await self.poller.drain(self.settings.shutdown_grace_seconds)
                finally:
                    sweeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeper
        finally:
            if self._redis is None:
                await redis.aclose()
        logger.info("worker stopped")

    async def _sweep(self, store: Store) -> None:
        """Forget terminal watches past their retention, once a minute."""
        while True:
            try:
                while await store.forget_expired():
                    pass
            except STORE_ERRORS as exc:
                logger.warning("retention sweep failed: %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)


async def run_worker(settings: Settings) -> None:
    worker = Worker(settings)
    worker.install_signal_handlers()
    await worker.run()
