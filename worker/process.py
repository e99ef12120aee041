"""The worker process: poller, webhook dispatcher and housekeeping, with graceful shutdown.

Shutdown order: a signal sets `stopping`; claiming stops; work in flight gets the grace period;
the rest is cancelled (leases lapse and other workers take over); pools close. A second
SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Iterable

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from client.ssrf import guarded_session
from service.settings import Settings
from service.store.connection import connect
from service.store.outbox import Outbox
from service.store.replication import Replication
from service.store.roster import Roster
from service.store.watches import Store

from . import health
from .dispatcher import Dispatcher
from .loop import ClaimLoop
from .partitions import Assignment
from .poller import Poller
from .retry import FailureStreak

logger = logging.getLogger(__name__)
SWEEP_INTERVAL = 60.0
ROLES = ("poller", "dispatcher")


class Worker:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis | None = None,
        roles: Iterable[str] = ROLES,
        *,
        serve_metrics: bool = True,
    ) -> None:
        self.settings = settings
        self.roles = frozenset(roles)
        # `vtwatch dev` serves the metrics on its API instead (one process, one registry).
        self.serve_metrics = serve_metrics and settings.metrics_port != 0
        self._redis = redis
        self.stopping = asyncio.Event()
        self.poller: Poller | None = None
        self.dispatcher: Dispatcher | None = None

    @property
    def loops(self) -> list[ClaimLoop]:
        return [loop for loop in (self.poller, self.dispatcher) if loop is not None]

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self.stopping.is_set():
            logger.info(
                "stopping: no new claims; %.0fs grace", self.settings.shutdown_grace_seconds
            )
        self.stopping.set()
        for loop in self.loops:
            loop.stop()

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
        settings = self.settings
        redis = self._redis if self._redis is not None else connect(settings)
        logger.info(
            "worker starting: roles %s, concurrency %d (%d per host), lease %.0fs, "
            "allowed networks %s",
            ",".join(sorted(self.roles)),
            settings.worker_concurrency,
            settings.per_host_concurrency,
            settings.lease_seconds,
            ",".join(map(str, settings.allowed_networks)) or "none",
        )
        try:
            async with outbound_session(settings) as session:
                store = Store(
                    redis,
                    namespace=settings.namespace,
                    partitions=settings.partitions,
                    retention_seconds=settings.retention_seconds,
                )
                await self._check_partitions(store)
                assignment = Assignment(Roster(redis, store.keys), settings.partitions)
                if "poller" in self.roles:
                    self.poller = Poller(store, session, settings, assignment=assignment)
                if "dispatcher" in self.roles:
                    replication = Replication(
                        redis, settings.wait_replicas, settings.wait_timeout_ms
                    )
                    outbox = Outbox(
                        redis,
                        namespace=settings.namespace,
                        partitions=settings.partitions,
                        replication=replication,
                    )
                    self.dispatcher = Dispatcher(outbox, session, settings, assignment=assignment)
                if self.poller is not None and self.dispatcher is not None:
                    self.poller.outbox_picker = self.dispatcher.picker
                if self.stopping.is_set():
                    self.stop()
                sweeper = asyncio.create_task(self._sweep(store))
                beats = asyncio.create_task(assignment.run(self.stopping))
                loops = [asyncio.create_task(self._run_loop(loop)) for loop in self.loops]
                endpoint = await health.start(self.loops, settings) if self.serve_metrics else None
                try:
                    await asyncio.gather(*loops)
                finally:
                    self.stop()  # should one loop have failed, the others end too
                    await asyncio.wait(loops)
                    await beats
                    sweeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeper
                    if endpoint is not None:
                        await endpoint.cleanup()
        finally:
            if self._redis is None:
                await redis.aclose()
        logger.info("worker stopped")

    async def _check_partitions(self, store: Store) -> None:
        """Refuse to run with another partition count than the store's (`PartitionsMismatch`
        ends the process); wait out a Redis that cannot be reached yet."""
        failures = FailureStreak("checking the store's partition count", logger)
        while not self.stopping.is_set():
            try:
                await store.check_partitions()
                return
            except (RedisError, OSError) as exc:
                await asyncio.sleep(failures.failed(exc))

    async def _run_loop(self, loop: ClaimLoop) -> None:
        await loop.run(self.settings.shutdown_grace_seconds)

    async def _sweep(self, store: Store) -> None:
        """Forget terminal watches past their retention, once a minute, until stopping; any
        error is retried with backoff. It ends by itself: a cancel that reaches it inside a
        Redis call can be swallowed there (seen: a SIGTERM just after start hung the worker
        in the next minute's nap)."""
        failures = FailureStreak("retention sweep", logger)
        while not self.stopping.is_set():
            try:
                while await store.forget_expired() and not self.stopping.is_set():
                    pass
            except Exception as exc:
                await self._nap(failures.failed(exc))
                continue
            failures.succeeded()
            await self._nap(SWEEP_INTERVAL)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


def outbound_session(settings: Settings) -> aiohttp.ClientSession:
    """The session every upstream poll and webhook goes through (`client.ssrf.guarded_session`)."""
    return guarded_session(settings.allowed_networks, limit=settings.worker_concurrency)


def tune_gc() -> None:
    """Polls allocate many short-lived, acyclic objects: collect garbage less often (a fifth
    less CPU per poll, measured), and keep start-up objects out of the collector's sight."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_worker(settings: Settings, roles: Iterable[str] = ROLES) -> None:
    tune_gc()
    worker = Worker(settings, roles=roles)
    worker.install_signal_handlers()
    await worker.run()
