from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from client import VideoTranslationClient
from tests.fakes import Reply, ScriptedUpstream, VirtualClock

pytest_plugins = ["tests.service_fixtures"]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def upstream(clock: VirtualClock) -> AsyncIterator[Callable[..., Any]]:
    """Start a scripted upstream; returns (client factory, upstream)."""
    servers: list[TestServer] = []
    clients: list[VideoTranslationClient] = []

    async def start(
        answer: Callable[[float], Reply], request_time: float = 0.0, **client_kwargs: Any
    ) -> tuple[VideoTranslationClient, ScriptedUpstream]:
        scripted = ScriptedUpstream(clock, answer, request_time)
        server = await scripted.start()
        servers.append(server)
        client = VideoTranslationClient(
            str(server.make_url("")).rstrip("/"),
            clock=clock,
            sleep=clock.sleep,
            **client_kwargs,
        )
        clients.append(client)
        return client, scripted

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        await server.close()
