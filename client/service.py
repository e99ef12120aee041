"""`WatchServiceClient`: an async SDK for the watch service's HTTP API (v1).

    async with WatchServiceClient("http://127.0.0.1:8000", api_key) as service:
        watch = await service.register("https://translate.example/jobs/1/status")
        async for event in service.events(watch.id):
            print(event.name, event.watch.state)

Results are typed (`Watch`, `StatusSummary`, `Event`); an error answer raises `ServiceAPIError`
carrying the HTTP status and the API's `detail`. `events` resumes by itself (with
`Last-Event-ID`) after a dropped connection, until the watch ends.

Nothing the service sends is read without a limit: an answer over MAX_RESPONSE_BYTES (8 MiB: the
largest page the API gives, 500 watches of 4 KiB metadata and two 2 KiB URLs each, is under
5 MiB) or an event over MAX_EVENT_BYTES (1 MiB: one watch is under 12 KiB) raises
`ServiceAPIError` after reading at most that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from ._capped import read_capped
from ._session import OwnsSession
from .errors import ClientError
from .upstream import Upstream

TERMINAL_STATES = frozenset({"completed", "error", "timeout", "cancelled"})
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)  # between attempts to resume a dropped event stream
RETRYABLE = frozenset({429, 502, 503, 504})
# A stream without an event is no failure once it stayed open this long (heartbeats come every
# 15 s): a long job behind a proxy that cuts long connections is followed for as long as it runs.
HEALTHY_STREAM_SECONDS = 30.0
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024  # of an error answer: only its detail's start is kept
MAX_EVENT_BYTES = 1024 * 1024


class ServiceAPIError(ClientError):
    """The service answered with an error: `status` (HTTP) and its `detail`."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Webhook:
    state: str
    attempts: int
    last_status_code: int | None


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch as the API renders it (times are RFC 3339 strings, as sent)."""

    id: str
    state: str
    reason: str | None
    status_url: str
    webhook_url: str | None
    metadata: dict[str, Any]
    policy: dict[str, Any]
    attempts: int
    last_result: str | None
    last_error: str | None
    progress: float | None
    created_at: str
    updated_at: str
    last_polled_at: str | None
    next_poll_at: str | None
    deadline: str
    finished_at: str | None
    webhook: Webhook
    upstream: dict[str, Any] | None = None  # as registered, header values shown as "***"
    result: Any = None  # what the job produced (`upstream.result`), once completed
    result_truncated: bool = False
    callback_url: str | None = None  # the registration's answer only, with `callback=True`

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Watch:
        fields: dict[str, Any] = {name: body.get(name) for name in cls.__slots__}
        fields["webhook"] = Webhook(**body["webhook"])
        fields["result_truncated"] = bool(body.get("result_truncated"))
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class HostStatus:
    """A host and port the tenant's watches polled, as the whole fleet sees it (the budget is
    the host's, every port's; the breaker the port's)."""

    host: str
    budget: float
    rate_limit: float
    breaker: str  # closed, open or half_open
    open_until: str | None
    breaker_trips: int
    last_polled_at: str
    port: int | None = None  # None from a service older than per-port breakers

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> HostStatus:
        fields: dict[str, Any] = {name: body.get(name) for name in cls.__slots__}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class StatusSummary:
    total: int
    by_state: dict[str, int]
    webhooks: dict[str, int]
    hosts: tuple[HostStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: `name` is `poll` or `state`."""

    id: str
    name: str
    watch: Watch


@dataclass(slots=True)
class _SSEParser:
    """Lines of `text/event-stream` in (without their line ends), complete events out. Raises
    ValueError for an event over MAX_EVENT_BYTES, or one that is not UTF-8 or not a Watch."""

    fields: dict[str, str] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    size: int = 0  # bytes of the event under way

    def feed(self, raw: bytes) -> Event | None:
        if raw.startswith(b":"):
            return None
        if raw:
            self.size += len(raw) + 1
            if self.size > MAX_EVENT_BYTES:
                raise ValueError(f"an event over {MAX_EVENT_BYTES // 1024} KiB")
            name, _, value = raw.decode().partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self.data.append(value)
            else:
                self.fields[name] = value
            return None
        event = None
        if self.data:
            try:
                watch = Watch.from_json(json.loads("\n".join(self.data)))
            except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"an event that is not a watch ({type(exc).__name__})") from exc
            event = Event(self.fields.get("id", ""), self.fields.get("event", "message"), watch)
        self.fields, self.data, self.size = {}, [], 0
        return event


class WatchServiceClient(OwnsSession):
    """The watch service over HTTP. Use with `async with`, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owned_session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._sleep = sleep

    async def __aenter__(self) -> WatchServiceClient:
        return self

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._owned_session is None:
            self._owned_session = aiohttp.ClientSession(headers=self._headers)
        return self._owned_session

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        async with self._http().request(
            method, self.base_url + path, headers=headers, timeout=self._timeout, **kwargs
        ) as response:
            if response.status >= 400:
                raise ServiceAPIError(response.status, await _error_detail(response))
            body = await read_capped(response, MAX_RESPONSE_BYTES)
            if body is None:
                raise ServiceAPIError(
                    response.status, f"the answer is over {MAX_RESPONSE_BYTES // 2**20} MiB"
                )
            try:
                return json.loads(body) if body else None
            except (ValueError, RecursionError) as exc:  # (RecursionError: nested too deep)
                raise ServiceAPIError(response.status, "the answer is not JSON") from exc

    async def register(
        self,
        status_url: str,
        *,
        webhook_url: str | None = None,
        policy: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        upstream: Upstream | None = None,
        callback: bool = False,
    ) -> Watch:
        """Register a watch. `upstream`: another job API (preset, rules, its API key);
        `callback=True`: the answer's `callback_url` is for the provider to push to."""
        body: dict[str, Any] = {"status_url": status_url}
        if upstream is not None:
            body["upstream"] = {**upstream.reading(), "headers": dict(upstream.headers)}
        if callback:
            body["callback"] = True
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if policy is not None:
            body["policy"] = dict(policy)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Watch.from_json(await self._call("POST", "/v1/watches", json=body, headers=headers))

    async def get(self, watch_id: str) -> Watch:
        return Watch.from_json(await self._call("GET", _watch_path(watch_id)))

    async def list(self, state: str | None = None, *, page_size: int = 100) -> AsyncIterator[Watch]:
        """Every watch of the tenant, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": page_size}
            if state is not None:
                params["state"] = state
            if cursor is not None:
                params["cursor"] = cursor
            page = await self._call("GET", "/v1/watches", params=params)
            for item in page["items"]:
                yield Watch.from_json(item)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def cancel(self, watch_id: str) -> Watch:
        return Watch.from_json(await self._call("DELETE", _watch_path(watch_id)))

    async def retry_webhook(self, watch_id: str) -> None:
        await self._call("POST", _watch_path(watch_id) + "/deliveries/retry")

    async def status(self) -> StatusSummary:
        body = await self._call("GET", "/v1/status")
        hosts = tuple(HostStatus.from_json(host) for host in body.get("hosts", ()))
        return StatusSummary(body["total"], body["by_state"], body["webhooks"], hosts)

    async def events(self, watch_id: str) -> AsyncIterator[Event]:
        """The watch's events until it ends. A dropped connection, a restart, a passing 429 or
        5xx, or a stream that ends before the watch did is resumed from the last event seen
        (`Last-Event-ID`), with backoff. Attempts that bring nothing (no event, and not open
        for HEALTHY_STREAM_SECONDS) count: after a few in a row, or on any other error answer,
        or on a stream that breaks the limits, `ServiceAPIError` is raised."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            why = "the stream ended before the watch did, with no new event"
            progressed = False
            try:
                async with self._http().get(
                    f"{self.base_url}{_watch_path(watch_id)}/events",
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=60),
                ) as response:
                    if response.status >= 400:
                        error = ServiceAPIError(response.status, await _error_detail(response))
                        if response.status not in RETRYABLE:
                            raise error
                        why = str(error)
                    else:
                        opened = self._clock()
                        async with contextlib.aclosing(_stream_events(response)) as stream:
                            async for event in stream:
                                if event is None:  # a heartbeat, or a part of an event
                                    alive = self._clock() - opened >= HEALTHY_STREAM_SECONDS
                                    progressed = progressed or alive
                                    continue
                                progressed = True
                                last_id = event.id or last_id
                                yield event
                                if event.name == "state" and event.watch.ended:
                                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"event stream lost: {exc}"
            if progressed:
                failures = 0
            if failures >= len(RECONNECT_DELAYS):
                raise ServiceAPIError(0, why)
            await self._sleep(RECONNECT_DELAYS[failures])
            failures += 1


def _watch_path(watch_id: str) -> str:
    return f"/v1/watches/{quote(watch_id, safe='')}"


async def _stream_events(response: aiohttp.ClientResponse) -> AsyncGenerator[Event | None, None]:
    """The events of a `text/event-stream` answer, and None for each line that completes none;
    `ServiceAPIError` for a line or an event over MAX_EVENT_BYTES, or one that is not a watch
    (never more than that is held)."""
    parser = _SSEParser()
    buffer = bytearray()
    try:
        async for chunk in response.content.iter_any():
            searched = len(buffer)  # no line ends in what came before
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", searched)) >= 0:
                if end - start > MAX_EVENT_BYTES:
                    break
                line = bytes(buffer[start:end]).removesuffix(b"\r")
                start = searched = end + 1
                yield parser.feed(line)
            del buffer[:start]
            if len(buffer) > MAX_EVENT_BYTES:  # a line too long, ended or not
                raise ValueError(f"a line over {MAX_EVENT_BYTES // 1024} KiB")
    except ValueError as exc:  # (a UnicodeDecodeError too)
        raise ServiceAPIError(response.status, f"a malformed event stream: {exc}") from None


async def _error_detail(response: aiohttp.ClientResponse) -> Any:
    """The API's `detail` from an error answer, or the start of whatever else came (a proxy's);
    at most MAX_ERROR_BYTES of it are read."""
    body = await read_capped(response, MAX_ERROR_BYTES)
    if body is None:
        return f"(an error body over {MAX_ERROR_BYTES // 1024} KiB)"
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:200]
    return parsed.get("detail") if isinstance(parsed, dict) else text[:200]
