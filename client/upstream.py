"""The upstream protocol, in one place: status values, hints and failure classification.

`GET <status_url>` answers `200 {"result": "pending" | "completed" | "error", ...}`, optionally
with a `Retry-After` header and body hints `progress` (0-100) and `eta_seconds`.

* transient (retry with backoff): connection errors, timeouts, 408, 425, 429, 5xx, a body that
  is not the expected JSON, a body over 64 KiB;
* terminal `error`: 404, 410 and any other 4xx (with a reason), a destination the caller's
  connector refuses (`DestinationRefused`, the service's SSRF guard), and a redirect when the
  caller does not follow them (the service: each hop would be a request its budget never saw);
* otherwise the reported status; hints that are out of range or unusable are ignored.

Whatever an upstream sends, a poll ends as an `Observation`: `classify_response` never raises,
and `fetch_status` records any exception it did not foresee as a transient failure, so the
caller's deadline still applies.

Both `VideoTranslationClient` and the service's workers poll through `fetch_status`.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ._capped import read_capped

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# How much of an unexpected value an error text may quote: never echo a hostile body.
EXCERPT_CHARS = 64
TRANSIENT_HTTP = frozenset({408, 425, 429})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Status(StrEnum):
    """What a poll can end with. Compares equal to the plain strings."""

    PENDING = "pending"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"


UPSTREAM_STATUSES = frozenset({Status.PENDING, Status.COMPLETED, Status.ERROR})
_STATUSES = {status.value: status for status in UPSTREAM_STATUSES}
TERMINAL = frozenset({Status.COMPLETED, Status.ERROR, Status.TIMEOUT})


class DestinationRefused(OSError):
    """Raised by a connector that must not connect to an address (an SSRF guard): retrying
    cannot help, so `fetch_status` reports a terminal error instead of a transient one."""


@dataclass(slots=True)  # not frozen: that costs each poll ~1.5 us (a setattr per field)
class Observation:
    """The outcome of one request to an upstream (a value: nothing changes it once made).

    `status` is None when the request failed transiently (the job's state is unknown);
    `error` says why. `retry_after`, `progress` and `eta_seconds` are the server's hints.
    `internal`: the failure was ours (an exception nobody foresaw), not the upstream's.
    """

    status: Status | None
    http_status: int | None = None
    error: str | None = None
    progress: float | None = None
    eta_seconds: float | None = None
    retry_after: float | None = None
    internal: bool = False

    def __post_init__(self) -> None:
        if self.error is not None:  # it is logged and stored: always valid UTF-8
            self.error = printable(self.error)

    @property
    def transient(self) -> bool:
        return self.status is None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def parse_json(body: bytes) -> Any:
    """`body` parsed as JSON: by orjson (several times faster), and by the standard library
    where orjson refuses what the standard library takes (NaN, integers past 64 bits), so an
    odd hint never hides a status (`_number` drops such values). Raises ValueError or
    RecursionError for what is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or an HTTP date), else None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    if not math.isfinite(number):
        return None
    return min(high, max(low, number))


def classify_response(
    http_status: int, body: bytes, retry_after_header: str | None = None, now: float | None = None
) -> Observation:
    """Turn one HTTP response into an Observation (see the module docstring for the rules)."""
    retry_after = parse_retry_after(retry_after_header, now)
    if http_status in TRANSIENT_HTTP or http_status >= 500:
        return Observation(None, http_status, f"HTTP {http_status}", retry_after=retry_after)
    if 400 <= http_status < 500:
        reason = "job not found" if http_status in (404, 410) else "request refused"
        return Observation(Status.ERROR, http_status, f"HTTP {http_status}: {reason}")
    if http_status != 200:
        return Observation(None, http_status, f"unexpected HTTP {http_status}")
    if len(body) > MAX_BODY_BYTES:
        return Observation(None, http_status, "response body over 64 KiB")
    try:
        parsed = parse_json(body)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON (a ValueError), or too deep
        return Observation(None, http_status, "response body is not JSON")
    result = parsed.get("result") if isinstance(parsed, dict) else None
    status = _STATUSES.get(result) if isinstance(result, str) else None
    if status is None:
        return Observation(None, http_status, f"unexpected result: {_excerpt(result)}")
    return Observation(
        status,
        http_status,
        progress=_number(parsed, "progress", 0.0, 100.0),
        eta_seconds=_number(parsed, "eta_seconds", 0.0, math.inf),
        retry_after=retry_after,
    )


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null or missing",
}


def _excerpt(value: object) -> str:
    """A short, printable hint of an unexpected JSON value (repr escapes lone surrogates)."""
    if isinstance(value, str):
        return repr(value[:EXCERPT_CHARS])
    return _JSON_TYPES.get(type(value), type(value).__name__)


def printable(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates (an undecodable header, say) become escapes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description of a failed request."""
    if isinstance(exc, asyncio.TimeoutError):
        return "request timed out"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def fetch_status(
    session: aiohttp.ClientSession,
    url: str | URL,
    timeout: float,
    headers: dict[str, str] | None = None,
    *,
    follow_redirects: bool = True,
) -> Observation:
    """One `GET url` with a total timeout and a capped body read; never raises (but cancels).

    `follow_redirects=False` (the service's workers: every request a host sees must be
    admitted by its budget) makes a redirect a terminal error naming where it led."""
    try:
        async with session.get(
            url, headers=headers, timeout=_timeout(timeout), allow_redirects=follow_redirects
        ) as response:
            if not follow_redirects and response.status in REDIRECTS:
                return _redirect_refused(response)
            body = await _read_capped(response)
            return classify_response(response.status, body, response.headers.get("Retry-After"))
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, DestinationRefused):
            return Observation(Status.ERROR, None, exc.os_error.strerror)
        return Observation(None, None, describe_exception(exc))
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        return Observation(None, None, describe_exception(exc))
    except Exception as exc:  # a reply or a bug nobody foresaw: still an observation
        name = type(exc).__name__
        logger.warning(
            "unexpected %s while polling; counted as a transient failure", name, exc_info=True
        )
        return Observation(None, None, f"unexpected {name}", internal=True)


def _redirect_refused(response: aiohttp.ClientResponse) -> Observation:
    location = _excerpt(response.headers.get("Location", ""))
    return Observation(
        Status.ERROR,
        response.status,
        f"HTTP {response.status}: redirect to {location} not followed; watch the final URL",
    )


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or MAX_BODY_BYTES + 1 bytes when it is longer (a transient error)."""
    body = await read_capped(response, MAX_BODY_BYTES)
    return _TOO_LONG if body is None else body


_TOO_LONG = bytes(MAX_BODY_BYTES + 1)  # what classify_response calls a body over the cap
