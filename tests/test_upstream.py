import json

import pytest

from client import Status, classify_response, parse_retry_after


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
