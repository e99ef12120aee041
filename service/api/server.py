"""Serving the API with uvicorn: on SIGTERM/SIGINT, open event streams end at once (they would
otherwise hold the graceful shutdown until its timeout cut them off)."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        close_streams(self.config.app, self._loop)
        super().handle_exit(sig, frame)


def close_streams(app: object, loop: asyncio.AbstractEventLoop | None) -> None:
    """End the app's event streams (safe from a signal handler)."""
    hub = getattr(getattr(app, "state", None), "events", None)
    if hub is not None and loop is not None:
        loop.call_soon_threadsafe(hub.close_streams)


def serve(
    app: FastAPI,
    host: str,
    port: int,
    *,
    log_level: str,
    grace_seconds: float,
    fd: int | None = None,
) -> None:
    """Serve on host:port, or on the listening socket `fd` when given (one of `vtwatch api
    --workers N`'s processes: the supervisor bound it, worker/supervisor.py)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(grace_seconds),
        log_config=None,  # uvicorn's logs go through ours (service/logs.py)
    )
    sockets = None if fd is None else [socket.socket(fileno=fd)]
    Server(config).run(sockets=sockets)
