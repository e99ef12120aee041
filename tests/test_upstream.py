import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client import Observation, Status, classify_response, parse_retry_after
from client.upstream import MAX_BODY_BYTES, fetch_status


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("result", ["pending", "completed", "error"])
def test_status_values_are_parsed(result: str) -> None:
    seen = classify_response(200, body({"result": result}))
    assert seen.status == result and not seen.transient


def test_hints_are_parsed_and_bounded() -> None:
    seen = classify_response(200, body({"result": "pending", "progress": 140, "eta_seconds": 12}))
    assert (seen.progress, seen.eta_seconds) == (100.0, 12.0)
    seen = classify_response(200, body({"result": "pending", "progress": "x", "eta_seconds": -3}))
    assert (seen.progress, seen.eta_seconds) == (None, 0.0)


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504])
def test_transient_http_statuses(code: int) -> None:
    seen = classify_response(code, b"", "3")
    assert seen.transient and seen.error == f"HTTP {code}" and seen.retry_after == 3.0


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_terminal_errors_with_a_reason(code: int) -> None:
    seen = classify_response(code, b"")
    assert seen.status is Status.ERROR and seen.terminal and str(code) in (seen.error or "")


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'{"result": "done"}', b'{"status": "pending"}', b"\xff"]
)
def test_malformed_bodies_are_transient(raw: bytes) -> None:
    assert classify_response(200, raw).transient


def test_bodies_over_64_kib_are_transient() -> None:
    padded = body({"result": "completed", "pad": "x" * 70_000})
    assert classify_response(200, padded).error == "response body over 64 KiB"


def test_retry_after_in_seconds_and_as_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after(None) is None


# Hostile upstreams (issue 8, item 7): whatever the body, an Observation and never an exception.

HUGE_INT = b"9" * 400
DEEP = b"[" * 60_000


@pytest.mark.parametrize(
    "raw",
    [
        b'{"result": []}',
        b'{"result": {}}',
        b'{"result": [["completed"]]}',
        b'{"result": {"completed": true}}',
        DEEP,
        b'{"result": "completed", "pad": ' + DEEP + b"}",
        b'{"a": ' * 10_000,
        b'{"result": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"result": NaN}',
        b'{"result": 3}',
        b'{"result": true}',
        b'{"result": null}',
        b'"completed"',
        b'["completed"]',
        b'{"result": "\\ud800"}',
        b'{"result": "\xed\xa0\x80"}',
        b'{"result": "comp\xffleted"}',
        b"\xff\xfe\xfd",
        b'{"result": "' + b"x" * 10_000 + b'"}',
        b'{"result": "pending", "eta_seconds": ' + b"9" * 5_000 + b"}",
    ],
    ids=[
        "result-array",
        "result-object",
        "result-nested-array",
        "result-object-with-status-key",
        "60000-nested-arrays",
        "60000-nested-arrays-in-a-field",
        "10000-nested-objects",
        "result-900-nested-arrays",
        "result-nan",
        "result-number",
        "result-true",
        "result-null",
        "top-level-string",
        "top-level-array",
        "escaped-lone-surrogate",
        "utf8-encoded-lone-surrogate",
        "invalid-utf8-in-result",
        "not-utf8",
        "long-result-string",
        "5000-digit-eta",
    ],
)
def test_hostile_bodies_are_transient_with_a_short_printable_error(raw: bytes) -> None:
    seen = classify_response(200, raw)
    assert seen.transient and seen.status is None and seen.http_status == 200
    assert seen.error is not None and len(seen.error) <= 100
    assert seen.error.isprintable() and seen.error.encode("utf-8")  # lone surrogates escaped


@pytest.mark.parametrize(
    "hints",
    [
        b'"progress": ' + HUGE_INT,
        b'"eta_seconds": ' + HUGE_INT,
        b'"eta_seconds": -' + HUGE_INT,
        b'"progress": ' + HUGE_INT + b', "eta_seconds": ' + HUGE_INT,
        b'"progress": 1e999, "eta_seconds": -1e999',
        b'"progress": NaN, "eta_seconds": Infinity',
        b'"progress": -Infinity',
        b'"progress": true, "eta_seconds": false',
        b'"progress": [50], "eta_seconds": {"s": 1}',
        b'"progress": "50", "eta_seconds": null',
    ],
    ids=[
        "400-digit-progress",
        "400-digit-eta",
        "negative-400-digit-eta",
        "both-400-digit",
        "1e999",
        "nan-infinity",
        "minus-infinity",
        "booleans",
        "containers",
        "string-and-null",
    ],
)
@pytest.mark.parametrize("result", ["pending", "completed"])
def test_unusable_hints_are_ignored_and_the_status_kept(hints: bytes, result: str) -> None:
    seen = classify_response(200, b'{"result": "' + result.encode() + b'", ' + hints + b"}")
    assert seen.status == result and seen.error is None
    assert (seen.progress, seen.eta_seconds) == (None, None)


def test_a_body_exactly_at_the_cap_is_parsed_and_one_byte_more_is_not() -> None:
    head, tail = b'{"result": "completed", "pad": "', b'"}'
    exact = head + b"x" * (MAX_BODY_BYTES - len(head) - len(tail)) + tail
    assert len(exact) == MAX_BODY_BYTES
    assert classify_response(200, exact).status is Status.COMPLETED
    over = head + b"x" * (MAX_BODY_BYTES + 1 - len(head) - len(tail)) + tail
    assert classify_response(200, over).error == "response body over 64 KiB"


@pytest.mark.parametrize(
    "header, expected",
    [
        ("1e400", None),
        ("9" * 400, None),
        ("nan", None),
        ("-inf", None),
        ("-5", 0.0),
        ("-" + "9" * 400, None),
        ("1e30", 1e30),
        ("Wed, 21 Oct 99999999999999999999 07:28:30 GMT", None),
        ("Wed, 99999999999999999999 Oct 2015 07:28:30 GMT", None),
        ("Wed, 21 Oct 2015 99999999999999999999:28:30 GMT", None),
        ("Wed, 21 Oct 2015 07:28:30 -99999999999999999999999", None),
        ("Mon, 99 Jan 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 2015 07:28:30 +9999", None),
        ("Wed, 21 Oct 2015 07:28:30", None),
        ("\ud800", None),
        ("", None),
    ],
)
def test_hostile_retry_after_values_are_ignored_or_bounded_below(
    header: str, expected: float | None
) -> None:
    assert parse_retry_after(header, now=1445412480.0) == expected
    seen = classify_response(200, body({"result": "pending"}), header, now=1445412480.0)
    assert seen.status is Status.PENDING and seen.retry_after == expected


async def test_an_unforeseen_exception_in_a_poll_is_a_short_transient_observation(
    upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> Observation:
        raise ZeroDivisionError("x" * 10_000)

    monkeypatch.setattr("client.upstream.classify_response", broken)
    probe, _ = await upstream(lambda now: (200, {"result": "completed"}, {}), max_attempts=3)
    seen = await probe.check()
    assert (seen.status, seen.error) == (None, "unexpected ZeroDivisionError")
    assert await probe.get_status() == "timeout"


async def test_cancelling_a_poll_still_cancels_it() -> None:
    started = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_get("/status", hang)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        task = asyncio.create_task(fetch_status(session, str(server.make_url("/status")), 30))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_an_error_text_with_lone_surrogates_is_made_storable() -> None:
    """An undecodable header (aiohttp's surrogateescape) in an error must not poison the save of
    a whole batch of polls (orjson refuses lone surrogates)."""
    import orjson

    from client.upstream import Observation

    seen = Observation(None, error="Cannot redirect to http://a\udcff:x/")

    assert orjson.dumps({"last_error": seen.error})
    assert seen.error == "Cannot redirect to http://a\\udcff:x/"
