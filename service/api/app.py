"""The FastAPI application: lifespan resources, middleware, routers, error mapping.

The lifespan checks the store's partition count once (`deps.PartitionCheck`; while Redis cannot
be read, `/readyz` and the first request to the store check it instead). The fleet-wide gauges
of the schedule (`vtwatch_due_backlog`, `vtwatch_oldest_due_age_seconds`) are read by a
background task every `VTW_METRICS_REFRESH_SECONDS` (2·P + 1 commands, P = `VTW_PARTITIONS`),
not by `/metrics` (routes/ops.py): a scrape costs no Redis command however often and by however
many it is made, and the gauges are at most that old (`-1` while Redis cannot be read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from ..errors import PartitionsMismatch, ServiceError
from ..metrics import DUE_BACKLOG, OLDEST_DUE_AGE
from ..settings import Settings
from ..store.connection import connect
from ..store.outbox import Outbox
from ..store.pubsub import EventHub
from ..store.replication import Replication
from ..store.watches import Store
from .auth import redact
from .deps import PartitionCheck
from .middleware import Authenticate, LimitBody, RequestIds, TimeRequests
from .responses import invalid_input, mismatch
from .routes import callbacks, dashboard, docs, ops
from .routes import events as event_routes
from .routes import watches as routes
from .routes import webhooks as webhook_routes

logger = logging.getLogger(__name__)
UNAVAILABLE = "storage unavailable: Redis cannot be reached or cannot take writes; retry later"


def create_app(settings: Settings | None = None, redis: aioredis.Redis | None = None) -> FastAPI:
    """The API. `redis` is injected by `vtwatch dev` (shared with its worker) and by tests."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis if redis is not None else connect(settings)
        app.state.settings = settings
        replication = Replication(client, settings.wait_replicas, settings.wait_timeout_ms)
        app.state.store = Store(
            client,
            retention_seconds=settings.retention_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            namespace=settings.namespace,
            partitions=settings.partitions,
            replication=replication,
            max_active_watches=settings.max_active_watches,
        )
        app.state.outbox = Outbox(
            client, namespace=settings.namespace, partitions=settings.partitions
        )
        app.state.events = EventHub(client, app.state.store.keys)
        app.state.partition_check = check = PartitionCheck(app.state.store)
        try:
            await check.ensure()  # a mismatch stops the start here
        except (RedisError, OSError) as exc:  # not reachable yet: /readyz and requests check it
            logger.warning("could not check the store's partition count yet: %s", exc)
        DUE_BACKLOG.set(-1)  # unknown until read
        OLDEST_DUE_AGE.set(-1)
        stopping = asyncio.Event()
        backlog = asyncio.create_task(
            read_backlog(app.state.store, check, settings.metrics_refresh_seconds, stopping)
        )
        try:
            yield
        finally:
            stopping.set()
            backlog.cancel()  # cuts a wait short; a read in progress may absorb it (redis-py)
            await asyncio.wait([backlog])
            await check.aclose()
            await app.state.events.aclose()
            if redis is None:
                await client.aclose()

    app = FastAPI(
        title="vtwatch",
        version="1",
        summary="Register translation jobs to watch; get told when they end.",
        lifespan=lifespan,
        docs_url=None,  # self-hosted instead: routes/docs.py
        redoc_url=None,
        # Outermost first: every request is timed and gets a request id; the key is checked
        # before the body is read, then the body is capped.
        middleware=[
            Middleware(TimeRequests),
            Middleware(RequestIds),
            Middleware(Authenticate, settings=settings),
            Middleware(LimitBody),
        ],
    )
    app.include_router(routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(event_routes.router)
    app.include_router(callbacks.router)
    app.include_router(dashboard.router)
    app.include_router(ops.router)
    docs.install(app)
    _add_error_handlers(app)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_input(exc.errors())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises the exception again after this answer, so the server logs it.
        request_id = getattr(request.state, "request_id", None)
        headers = {"X-Request-ID": request_id} if request_id else None
        return JSONResponse({"detail": "internal error"}, status_code=500, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    # The operator's message is logged once (`PartitionCheck`); the caller's names no namespace.
    @app.exception_handler(PartitionsMismatch)
    async def misconfigured(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PartitionsMismatch)
        return JSONResponse(
            {"detail": mismatch(exc)},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )

    # Connection loss, timeouts, a failover's READONLY, OOM under noeviction, BUSY, LOADING...:
    # every Redis error is a passing state of the store for the caller, never a 500.
    @app.exception_handler(RedisError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        path = redact(request.url.path)  # a push callback's token is a credential
        logger.warning("Redis unavailable during %s %s: %s", request.method, path, exc)
        return JSONResponse(
            {"detail": UNAVAILABLE},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )


async def read_backlog(
    store: Store, check: PartitionCheck, every: float, stopping: asyncio.Event
) -> None:
    """Read the schedule's backlog into its gauges now and every `every` seconds, until
    `stopping` is set; `-1` while it cannot be read. The first failure of a streak is logged,
    and the recovery."""
    failing = False
    while not stopping.is_set():
        try:
            await check.ensure()  # a misconfigured process would read the wrong keys
            backlog, oldest = await store.due_backlog()
        except (RedisError, OSError, PartitionsMismatch) as exc:
            if not failing:
                logger.warning("metrics: the due backlog cannot be read: %s", exc)
            failing, backlog, oldest = True, -1, -1.0
        except Exception:
            logger.exception("metrics: reading the due backlog failed")
            failing, backlog, oldest = True, -1, -1.0
        else:
            if failing:
                logger.info("metrics: the due backlog is read again")
            failing = False
        DUE_BACKLOG.set(backlog)
        OLDEST_DUE_AGE.set(oldest)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every)
