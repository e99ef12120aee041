"""The service SDK against hostile or broken APIs (review fixes), each an aiohttp app on loopback:
an API that closes every event stream before any event is given up on after a few tries with
backoff (it used to be reconnected to forever, and `vtwatch follow` hung); an answer, an event
or a line past the SDK's limits raises `ServiceAPIError` after reading no more than the limit
(it used to be read whole), while the largest answer the real API gives still fits."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from rich.console import Console

from client import service as sdk
from client.service import (
    MAX_EVENT_BYTES,
    MAX_RESPONSE_BYTES,
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


# -- limits on what is read ------------------------------------------------------------------


class Endless:
    """A body that never ends, counting what was written before the reader went away."""

    def __init__(self, prefix: bytes, filler: bytes) -> None:
        self.prefix, self.filler, self.sent = prefix, filler * (65536 // len(filler)), 0

    async def send(
        self, request: web.Request, headers: dict[str, str], status: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        try:
            await response.write(self.prefix)
            while self.sent < 64 * 2**20:  # (a bound for the test itself)
                await response.write(self.filler)
                self.sent += len(self.filler)
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        return response


@pytest.fixture
async def endless_api() -> AsyncIterator[tuple[str, Endless, Endless]]:
    """`GET /v1/watches/{id}`: an endless JSON string; `/events`: an endless event; a 500 with an
    endless body at `/v1/status`."""
    body = Endless(b'{"id": "' + WATCH_ID.encode() + b'", "metadata": {"pad": "', b"x")
    error = Endless(b'{"detail": "', b"y")
    stream = Endless(b"event: poll\n", b"data: " + b"z" * 1000 + b"\n")
    app = web.Application()
    routes = {
        f"/v1/watches/{WATCH_ID}": (body, {"Content-Type": "application/json"}, 200),
        "/v1/status": (error, {}, 500),
        EVENTS_PATH: (stream, {"Content-Type": "text/event-stream"}, 200),
    }

    async def handle(request: web.Request) -> web.StreamResponse:
        endless, headers, status = routes[request.path]
        return await endless.send(request, headers, status)

    for path in routes:
        app.router.add_get(path, handle)
    async with served(app) as url:
        yield url, body, stream
        assert error.sent < 8 * 2**20


async def test_an_endless_answer_is_refused_after_the_limit(
    endless_api: tuple[str, Endless, Endless],
) -> None:
    url, body, _ = endless_api

    async with WatchServiceClient(url) as client:
        with pytest.raises(ServiceAPIError, match="over 8 MiB") as refused:
            await asyncio.wait_for(client.get(WATCH_ID), 10)
        with pytest.raises(ServiceAPIError) as failed:
            await asyncio.wait_for(client.status(), 10)

    assert refused.value.status == 200
    assert body.sent < MAX_RESPONSE_BYTES + 16 * 2**20  # the limit, and what sockets buffer
    assert failed.value.status == 500 and "over 64 KiB" in str(failed.value.detail)


async def test_an_endless_event_is_refused_after_the_limit(
    endless_api: tuple[str, Endless, Endless],
) -> None:
    url, _, stream = endless_api

    async with WatchServiceClient(url, sleep=Sleeps()) as client:
        with pytest.raises(ServiceAPIError, match="an event over 1024 KiB"):
            await asyncio.wait_for(anext(client.events(WATCH_ID)), 10)

    assert stream.sent < MAX_EVENT_BYTES + 16 * 2**20


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * (MAX_EVENT_BYTES + 10)],  # one line, never ended
        [b": " + b"x" * (MAX_EVENT_BYTES + 10) + b"\n\n"],  # one comment line, ended
        [b"data: {\n" * (MAX_EVENT_BYTES // 4)],  # many lines, one event
    ],
    ids=["an unended line", "a long comment", "many lines"],
)
async def test_lines_and_events_past_the_limit_are_refused(chunks: list[bytes]) -> None:
    app, _ = event_api(lambda n: chunks)

    async with served(app) as url:
        with pytest.raises(ServiceAPIError, match="over 1024 KiB"):
            await asyncio.wait_for(follow_events(url, Sleeps()), 5)


@pytest.mark.parametrize(
    "chunk",
    [
        b"data: not json\n\n",
        b'data: {"id": 1}\n\n',
        b"data: \xff\xfe\n\n",
        b"data: []\n\n",
        b"data: " + b"[" * 100_000 + b"\n\n",  # nested past the parser's recursion limit
    ],
    ids=["not JSON", "not a watch", "not UTF-8", "an array", "too deep"],
)
async def test_an_event_that_is_no_watch_is_a_service_error(chunk: bytes) -> None:
    app, _ = event_api(lambda n: [chunk])

    async with served(app) as url:
        with pytest.raises(ServiceAPIError, match="malformed event stream"):
            await asyncio.wait_for(follow_events(url, Sleeps()), 5)


async def test_the_largest_page_the_api_gives_fits_the_limit(api: httpx.AsyncClient) -> None:
    """500 watches (the API's largest `limit`), each with 4 KiB of metadata and two 2 KiB URLs
    (as the real API renders them): more than 1 MiB, within MAX_RESPONSE_BYTES."""
    url = "http://translate-1.example/" + "s" * (2048 - 27)
    registered = await api.post(
        "/v1/watches",
        json={"status_url": url, "webhook_url": url, "metadata": {"k": "x" * 4088}},
    )
    assert registered.status_code == 201, registered.text
    largest = registered.json()
    page = json.dumps(
        {"items": [{**largest, "id": f"w_{n:016d}"} for n in range(500)], "next_cursor": None}
    ).encode()
    app = web.Application()

    async def watches(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="application/json")

    app.router.add_get("/v1/watches", watches)

    async with served(app) as base, WatchServiceClient(base) as client:
        listed = [w async for w in client.list(page_size=500)]

    assert 2**20 < len(page) < MAX_RESPONSE_BYTES
    assert len(listed) == 500 and listed[-1].metadata == largest["metadata"]


async def test_an_answer_nested_too_deep_is_a_service_error() -> None:
    app = web.Application()

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000, content_type="application/json")

    app.router.add_get(f"/v1/watches/{WATCH_ID}", deep)

    async with served(app) as url, WatchServiceClient(url) as client:
        with pytest.raises(ServiceAPIError, match="not JSON"):
            await client.get(WATCH_ID)
