"""The service SDK against hostile or broken APIs (review fixes), each an aiohttp app on loopback:
an API that closes every event stream before any event is given up on after a few tries with
backoff (it used to be reconnected to forever, and `vtwatch follow` hung)."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

from client import service as sdk
from client.service import (
    RECONNECT_DELAYS,
    ServiceAPIError,
    WatchServiceClient,
)
from client.terminal import follow as follow_command
from client.terminal.display import Display

from .fakes import served

WATCH_ID = "w_0123456789abcdef"
EVENTS_PATH = f"/v1/watches/{WATCH_ID}/events"


def watch(state: str = "pending", attempts: int = 0, **fields: Any) -> dict[str, Any]:
    """A Watch as the API renders it."""
    return {
        "id": WATCH_ID,
        "state": state,
        "reason": None,
        "status_url": "http://translate-1:5000/status",
        "webhook_url": None,
        "metadata": {},
        "policy": {},
        "attempts": attempts,
        "last_result": None,
        "last_error": None,
        "progress": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "last_polled_at": None,
        "next_poll_at": None,
        "deadline": "2026-01-01T01:00:00Z",
        "finished_at": None,
        "webhook": {"state": "none", "attempts": 0, "last_status_code": None},
        **fields,
    }


def sse(event_id: str, name: str, body: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(body)}\n\n".encode()


Stream = Callable[[int], list[bytes]]  # the n-th connection (from 1) → what it sends, then closes


def event_api(stream: Stream) -> tuple[web.Application, list[str | None]]:
    """An API whose event stream sends `stream(n)` on the n-th connection, then closes it;
    also returns the `Last-Event-ID` of every connection."""
    resumed_after: list[str | None] = []

    async def events(request: web.Request) -> web.StreamResponse:
        resumed_after.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in [b"retry: 15000\n\n", *stream(len(resumed_after))]:
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get(EVENTS_PATH, events)
    return app, resumed_after


class Sleeps(list[float]):
    """An injected sleep: records each delay, waits for none."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


async def follow_events(
    url: str, sleeps: Sleeps, clock: Callable[[], float] | None = None
) -> list[sdk.Event]:
    extra = {"clock": clock} if clock is not None else {}
    async with WatchServiceClient(url, sleep=sleeps, **extra) as client:
        return [event async for event in client.events(WATCH_ID)]


# -- streams that end without an event -------------------------------------------------------


async def test_streams_closed_before_any_event_are_given_up_on_with_backoff() -> None:
    app, connections = event_api(lambda n: [b": heartbeat\n\n"])
    sleeps = Sleeps()

    async with served(app) as url:
        with pytest.raises(ServiceAPIError, match="with no new event"):
            await asyncio.wait_for(follow_events(url, sleeps), 5)

    assert len(connections) == len(RECONNECT_DELAYS) + 1 == 5
    assert sleeps == list(RECONNECT_DELAYS)  # backing off, not at once


async def test_streams_that_each_bring_an_event_are_followed_to_the_end() -> None:
    def stream(n: int) -> list[bytes]:
        if n < 8:
            return [sse(f"{n}-0", "poll", watch(attempts=n))]
        return [sse("8-2", "state", watch("completed", attempts=8))]

    app, connections = event_api(stream)
    sleeps = Sleeps()

    async with served(app) as url:
        events = await asyncio.wait_for(follow_events(url, sleeps), 5)

    assert [(e.name, e.watch.attempts) for e in events][-2:] == [("poll", 7), ("state", 8)]
    assert len(events) == 8
    assert connections == [None, *(f"{n}-0" for n in range(1, 8))]  # each resumed
    assert sleeps == [RECONNECT_DELAYS[0]] * 7


async def test_quiet_streams_that_stay_open_are_no_failure() -> None:
    """A long job behind a proxy that cuts connections: streams of heartbeats only, each open
    past HEALTHY_STREAM_SECONDS, are followed for as long as they come."""
    ticks: Iterator[float] = itertools.count(0.0, sdk.HEALTHY_STREAM_SECONDS)

    def stream(n: int) -> list[bytes]:
        if n < 9:
            return [b": heartbeat\n\n", b": heartbeat\n\n"]
        return [sse("9-2", "state", watch("completed"))]

    app, connections = event_api(stream)
    sleeps = Sleeps()

    async with served(app) as url:
        events = await asyncio.wait_for(follow_events(url, sleeps, lambda: next(ticks)), 5)

    assert [e.watch.state for e in events] == ["completed"]
    assert len(connections) == 9


async def test_vtwatch_follow_exits_4_when_every_stream_closes_empty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sdk, "RECONNECT_DELAYS", (0.01,) * 4)
    app, connections = event_api(lambda n: [])
    display = Display("following", Console(file=io.StringIO(), force_terminal=False))

    async with served(app) as url:
        args = argparse.Namespace(watch_id=WATCH_ID, api=url, key=None)
        code = await asyncio.wait_for(follow_command.follow(args, display), 5)

    assert code == follow_command.UNREACHABLE == 4
    assert len(connections) == 5
    assert "no new event" in capsys.readouterr().err
