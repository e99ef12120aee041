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

Other job APIs are read through status rules (`Upstream`, compiled to a `StatusReader`): a
preset of `client.presets` and/or rules of the caller's, JMESPath over the body (below).

Both `VideoTranslationClient` and the service's workers poll through `fetch_status`.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ._capped import read_capped
from ._jmespath import Budget, PathError, compile_path, search
from .errors import ConfigurationError
from .presets import DEFAULT_PRESET, PRESETS

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# How much of an unexpected value an error text may quote: never echo a hostile body.
EXCERPT_CHARS = 64
TRANSIENT_HTTP = frozenset({408, 425, 429})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10  # aiohttp's default, for the redirects followed here


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
    # What the upstream's job produced (an `Upstream.result` path; at most MAX_RESULT_BYTES of
    # JSON, else its JSON text cut there and `result_truncated`). Only on `completed`.
    result: Any = None
    result_truncated: bool = False

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
    reader: StatusReader | None = None,
) -> Observation:
    """One `GET url` with a total timeout and a capped body read; never raises (but cancels).

    `follow_redirects=False` (the service's workers: every request a host sees must be
    admitted by its budget) makes a redirect a terminal error naming where it led. `reader`:
    how to read the answer (status rules); None is the original protocol (`classify_response`).
    `headers` never leave the URL's origin: a redirect elsewhere is followed without them.
    """
    classify = classify_response if reader is None else reader.classify
    try:
        if headers and follow_redirects:
            return await _fetch_following(session, URL(url), timeout, headers, classify)
        async with session.get(
            url, headers=headers, timeout=_timeout(timeout), allow_redirects=follow_redirects
        ) as response:
            if not follow_redirects and response.status in REDIRECTS:
                return _redirect_refused(response)
            body = await _read_capped(response)
            return classify(response.status, body, response.headers.get("Retry-After"))
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


async def _fetch_following(
    session: aiohttp.ClientSession,
    url: URL,
    timeout: float,
    headers: dict[str, str],
    classify: Callable[[int, bytes, str | None], Observation],
) -> Observation:
    """`GET url`, following redirects here rather than in aiohttp, so that `headers` (an API
    key) go to the first URL's origin only: aiohttp forwards all but `Authorization`."""
    deadline = time.monotonic() + timeout
    sent: dict[str, str] | None = headers
    for _ in range(MAX_REDIRECTS + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        async with session.get(
            url, headers=sent, timeout=aiohttp.ClientTimeout(total=left), allow_redirects=False
        ) as response:
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location:
                body = await _read_capped(response)
                return classify(response.status, body, response.headers.get("Retry-After"))
        target = url.join(URL(location))
        if target.origin() != url.origin():
            sent = None  # and not again, even back at the first origin
        url = target
    return Observation(None, None, f"more than {MAX_REDIRECTS} redirects")


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


# -- Status rules: any job API ------------------------------------------------------------------

THEN = {"completed": Status.COMPLETED, "error": Status.ERROR, "pending": Status.PENDING}
MAX_RULES = 32
MAX_RULE_BYTES = 1024
MAX_HEADERS = 16
MAX_HEADERS_BYTES = 8 * 1024
MAX_RESULT_BYTES = 16 * 1024
MAX_ERROR_CHARS = 500
# Headers a caller may not set: they describe the connection or the body, not the caller.
REFUSED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_RULE_KEYS = frozenset({"path", "http_status", "equals", "in", "exists", "then"})
_MATCHERS = ("equals", "in", "exists")
_HINTS = ("progress", "eta", "error", "result")
_SCALES = {"percent": 1.0, "fraction": 100.0}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name (fullmatch)
# What a field value may not hold (RFC 9110: visible characters, spaces and tabs): the other
# control characters, which aiohttp refuses when sending (every poll would fail).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class UpstreamSpecError(ConfigurationError):
    """An `Upstream` that cannot be used; `field` says where (`upstream.rules[2].path`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, eq=True)
class Upstream:
    """How to poll and read one job API.

    `preset` (a name of `client.presets.PRESETS`, default `vtwatch`) fills `rules`,
    `progress`, `eta`, `error`, `result` and `progress_scale`; each one given here replaces
    the preset's. `headers` go with every poll of this upstream and nowhere else (an API key:
    they are never shown in a repr, a log or an error).

    Rules are tried in order and the first that matches decides the status (`then`:
    `completed`, `error` or `pending`). A rule matches on `http_status` (a code or a list),
    on `path` (JMESPath over the JSON body) with one of `equals` (a value), `in` (a list) or
    `exists` (true: the path gives a value; false: it gives none), or on both. Timeouts, 408,
    425, 429, 5xx and bodies that are not JSON or over 64 KiB stay transient, and other 4xx
    `error`, unless a rule names that status code; a 2xx body no rule matches is a transient
    failure ("no rule matched"), so the deadline still applies.

    `progress` reads a number 0-100 (0-1 with `progress_scale="fraction"`) or a string
    "NN%"; `eta` seconds; `error` the provider's message (the error text of a watch that ends
    `error`); `result` what the job produced (kept when it ends `completed`, cut past 16 KiB
    of JSON). Raises UpstreamSpecError for anything it cannot use.
    """

    preset: str = DEFAULT_PRESET
    headers: Mapping[str, str] = field(default_factory=dict)
    rules: Sequence[Mapping[str, Any]] | None = None
    progress: str | None = None
    eta: str | None = None
    error: str | None = None
    result: str | None = None
    progress_scale: str | None = None

    def __post_init__(self) -> None:
        check_headers(self.headers)
        self.reader()  # compiles (cached): every Upstream that exists can be used

    def __repr__(self) -> str:
        shown = {name: "***" for name in self.headers}
        return f"Upstream(preset={self.preset!r}, headers={shown}, {self.reading()})"

    @classmethod
    def from_json(cls, data: Any, field_name: str = "upstream") -> Upstream:
        """An Upstream from its JSON object (a registration's `upstream`)."""
        if not isinstance(data, Mapping):
            raise UpstreamSpecError(field_name, "must be an object")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise UpstreamSpecError(f"{field_name}.{key}", "unknown field")
        return cls(**{key: data[key] for key in data if data[key] is not None})

    def reading(self) -> dict[str, Any]:
        """What this Upstream says about reading answers (all but the headers), as JSON."""
        own: dict[str, Any] = {"preset": self.preset}
        for name in ("rules", *_HINTS, "progress_scale"):
            value = getattr(self, name)
            if value is not None:
                # a tuple of rules is a list; anything else (a string!) is refused as it is
                own[name] = list(value) if isinstance(value, tuple) else value
        return own

    def reader(self) -> StatusReader | None:
        """The compiled rules; None for the original protocol (`classify_response`)."""
        return compile_reader(json.dumps(self.reading(), sort_keys=True, separators=(",", ":")))


def check_headers(headers: Any, field_name: str = "upstream.headers") -> None:
    """Raise UpstreamSpecError unless `headers` are at most 16 names to text values, 8 KiB
    in all, none of them describing the connection (Host, Content-Length, hop-by-hop). The
    message names the header, never its value."""
    if not isinstance(headers, Mapping):
        raise UpstreamSpecError(field_name, "must be an object of header names to values")
    if len(headers) > MAX_HEADERS:
        raise UpstreamSpecError(field_name, f"at most {MAX_HEADERS} headers")
    size = 0
    for name, value in headers.items():
        where = f"{field_name}.{name[:EXCERPT_CHARS]}" if isinstance(name, str) else field_name
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise UpstreamSpecError(where, "not a valid header name")
        if name.lower() in REFUSED_HEADERS:
            raise UpstreamSpecError(where, "this header is set by the connection, not by you")
        if not isinstance(value, str) or _CONTROL.search(value):
            raise UpstreamSpecError(where, "the value must be text on one line")
        try:
            size += len(name.encode()) + len(value.encode())
        except UnicodeEncodeError:  # a lone surrogate: it cannot be sealed or sent
            raise UpstreamSpecError(where, "the value must be UTF-8 text") from None
    if size > MAX_HEADERS_BYTES:
        raise UpstreamSpecError(field_name, f"{size} bytes of headers; at most {MAX_HEADERS_BYTES}")


@functools.lru_cache(maxsize=512)
def compile_reader(reading_json: str) -> StatusReader | None:
    """The StatusReader for an Upstream's `reading()` (as canonical JSON): compiled once per
    distinct spec. Raises UpstreamSpecError."""
    reading = json.loads(reading_json)
    name = reading.pop("preset")
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise UpstreamSpecError("upstream.preset", f"unknown preset; one of {', '.join(PRESETS)}")
    if name == DEFAULT_PRESET and not reading:
        return None  # the original protocol, read by classify_response exactly
    merged = {key: preset.get(key) for key in ("rules", *_HINTS, "progress_scale")} | reading
    return StatusReader(merged)


@dataclass(frozen=True, slots=True)
class _Rule:
    then: Status
    codes: frozenset[int] | None
    path: Any  # a compiled JMESPath (ParsedResult), or None
    path_text: str | None
    matcher: str | None  # "equals" | "in" | "exists"
    value: Any

    def test(self, found: Any) -> bool:
        if self.matcher == "exists":
            return (found is not None) is self.value
        if self.matcher == "equals":
            return _same(found, self.value)
        return any(_same(found, option) for option in self.value)


class StatusReader:
    """Compiled status rules: `classify` turns one answer into an Observation (never raises)."""

    def __init__(self, reading: Mapping[str, Any]) -> None:
        rules = reading.get("rules")
        if not isinstance(rules, list) or not rules:
            raise UpstreamSpecError("upstream.rules", "must be a non-empty list of rules")
        if len(rules) > MAX_RULES:
            raise UpstreamSpecError("upstream.rules", f"at most {MAX_RULES} rules")
        self.rules = tuple(
            _compile_rule(rule, f"upstream.rules[{i}]") for i, rule in enumerate(rules)
        )
        self.named = frozenset(code for rule in self.rules for code in rule.codes or ())
        self.hints = {
            name: _compile_path(reading[name], f"upstream.{name}")
            for name in _HINTS
            if reading.get(name) is not None
        }
        scale = reading.get("progress_scale") or "percent"
        if scale not in _SCALES:
            raise UpstreamSpecError("upstream.progress_scale", "must be percent or fraction")
        self.progress_factor = _SCALES[scale]

    def classify(
        self,
        http_status: int,
        body: bytes,
        retry_after_header: str | None = None,
        now: float | None = None,
    ) -> Observation:
        """One answer through the rules (see `Upstream`)."""
        is_2xx = 200 <= http_status < 300
        if not is_2xx and http_status not in self.named:
            return classify_response(http_status, body, retry_after_header, now)
        unread: str | None = None
        document: Any = _NOTHING
        if len(body) > MAX_BODY_BYTES:
            unread = "response body over 64 KiB"
        else:
            try:
                document = parse_json(body)
            except (ValueError, RecursionError):
                unread = "response body is not JSON"
        first_found: Any = _NOTHING
        budget = Budget()  # for all the expressions this answer runs, rules and hints
        for rule in self.rules:
            if rule.codes is not None and http_status not in rule.codes:
                continue
            if rule.path is None:
                return self._observe(
                    rule.then, http_status, document, retry_after_header, now, budget
                )
            if document is _NOTHING:
                continue
            found = _search(rule.path, document, budget)
            if first_found is _NOTHING:
                first_found = found
            if found is not _FAILED and rule.test(found):
                return self._observe(
                    rule.then, http_status, document, retry_after_header, now, budget
                )
        if not is_2xx:  # a named code no rule took: as the original protocol reads it
            return classify_response(http_status, body, retry_after_header, now)
        retry_after = parse_retry_after(retry_after_header, now)
        if unread is not None:
            return Observation(None, http_status, unread, retry_after=retry_after)
        if first_found is _NOTHING:  # no rule with a path was for this status code
            why = f"no rule matched: none is for HTTP {http_status}"
        elif first_found is _FAILED:
            why = f"no rule matched: {self.first_path_text(http_status)} could not be evaluated"
        else:
            why = f"no rule matched: {self.first_path_text(http_status)} gave "
            why += _excerpt(first_found)
        return Observation(None, http_status, why, retry_after=retry_after)

    def first_path_text(self, http_status: int) -> str:
        """The path of the first rule with one that was tried on an answer of `http_status`."""
        for rule in self.rules:
            if rule.path_text is not None and (rule.codes is None or http_status in rule.codes):
                return rule.path_text
        return "?"

    def _observe(
        self,
        status: Status,
        http_status: int,
        document: Any,
        retry_after_header: str | None,
        now: float | None,
        budget: Budget,
    ) -> Observation:
        seen = Observation(
            status, http_status, retry_after=parse_retry_after(retry_after_header, now)
        )
        if document is _NOTHING:
            if status is Status.ERROR:
                seen.error = f"HTTP {http_status}"
            return seen
        hints = self.hints
        if "progress" in hints:
            seen.progress = _progress(
                _search(hints["progress"], document, budget), self.progress_factor
            )
        if "eta" in hints:
            seen.eta_seconds = _seconds(_search(hints["eta"], document, budget))
        if status is Status.ERROR:
            message = _search(hints["error"], document, budget) if "error" in hints else None
            seen.error = _text(message) or f"the upstream reported an error (HTTP {http_status})"
        if status is Status.COMPLETED and "result" in hints:
            found = _search(hints["result"], document, budget)
            if found is not None and found is not _FAILED:
                seen.result, seen.result_truncated = capped_result(found)
        return seen


_NOTHING = object()  # no JSON document (the body was not JSON, or too long)
_FAILED = object()  # an expression that raised or ran out of budget: matches no rule


def _search(path: Any, document: Any, budget: Budget) -> Any:
    try:
        return search(path, document, budget)
    except Exception:  # a function refused its argument, the budget ran out...: no value
        return _FAILED


def _compile_path(text: Any, where: str) -> Any:
    if not isinstance(text, str):
        raise UpstreamSpecError(where, "must be a JMESPath expression (text)")
    try:
        return compile_path(text)
    except PathError as exc:
        raise UpstreamSpecError(where, str(exc)) from None


def _compile_rule(rule: Any, where: str) -> _Rule:
    if not isinstance(rule, Mapping):
        raise UpstreamSpecError(where, "must be an object")
    size = len(json.dumps(rule, separators=(",", ":"), default=str).encode())
    if size > MAX_RULE_BYTES:
        raise UpstreamSpecError(where, f"{size} bytes of JSON; at most {MAX_RULE_BYTES}")
    for key in rule:
        if key not in _RULE_KEYS:
            raise UpstreamSpecError(f"{where}.{key}", "unknown field")
    then_text = rule.get("then")
    then = THEN.get(then_text) if isinstance(then_text, str) else None
    if then is None:
        raise UpstreamSpecError(f"{where}.then", "must be completed, error or pending")
    codes = _codes(rule["http_status"], f"{where}.http_status") if "http_status" in rule else None
    matchers = [name for name in _MATCHERS if name in rule]
    if "path" not in rule:
        if codes is None:
            raise UpstreamSpecError(where, "needs a path, an http_status or both")
        if matchers:
            raise UpstreamSpecError(f"{where}.{matchers[0]}", "needs a path to test")
        return _Rule(then, codes, None, None, None, None)
    if len(matchers) != 1:
        raise UpstreamSpecError(where, "a path needs exactly one of equals, in or exists")
    matcher, value = matchers[0], rule[matchers[0]]
    if matcher == "in" and not isinstance(value, list):
        raise UpstreamSpecError(f"{where}.in", "must be a list of values")
    if matcher == "exists" and not isinstance(value, bool):
        raise UpstreamSpecError(f"{where}.exists", "must be true or false")
    path = _compile_path(rule["path"], f"{where}.path")
    return _Rule(then, codes, path, rule["path"], matcher, value)


def _codes(value: Any, where: str) -> frozenset[int]:
    codes = value if isinstance(value, list) else [value]
    if not codes or not all(
        isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
        for code in codes
    ):
        raise UpstreamSpecError(where, "must be an HTTP status code (100-599) or a list of them")
    return frozenset(codes)


def _same(found: Any, expected: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(found, bool) or isinstance(expected, bool):
        return found is expected
    if isinstance(found, int | float) and isinstance(expected, int | float):
        return bool(found == expected)
    return type(found) is type(expected) and bool(found == expected)


def _progress(found: Any, factor: float) -> float | None:
    if isinstance(found, str):
        match = _PERCENT.match(found)
        number = float(match.group(1)) if match else None
    else:
        number = _finite(found)
        number = None if number is None else number * factor
    return None if number is None else min(100.0, max(0.0, number))


def _seconds(found: Any) -> float | None:
    number = _finite(found)
    return None if number is None or number < 0 else number


def _finite(found: Any) -> float | None:
    if isinstance(found, bool) or not isinstance(found, int | float):
        return None
    try:
        number = float(found)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _text(found: Any) -> str | None:
    """An error message for a watch's `last_error`: text as is, anything else as JSON; cut."""
    if found is None or found is _FAILED:
        return None
    if not isinstance(found, str):
        found = _json_prefix(found, MAX_ERROR_CHARS * 4)[0].decode(errors="ignore")
    found = found.strip()
    return found[:MAX_ERROR_CHARS] if found else None


def capped_result(found: Any) -> tuple[Any, bool]:
    """`found`, or its JSON text cut at MAX_RESULT_BYTES (and True) when it is longer, or
    when the store's encoder (orjson) cannot hold it as it is (a lone surrogate, nesting past
    orjson's limit): the watch document that keeps it must still save."""
    text, whole = _json_prefix(found, MAX_RESULT_BYTES)
    if whole:
        try:
            orjson.dumps(found)  # at most 16 KiB of it: cheap
        except TypeError:  # orjson.JSONEncodeError
            return text.decode(errors="ignore"), True
        return found, False
    return text.decode(errors="ignore"), True


def _json_prefix(value: Any, limit: int) -> tuple[bytes, bool]:
    """The compact JSON of `value`, at most its first `limit` bytes, and whether that is all
    of it. Iterative, and it stops at `limit`: a value JMESPath built with shared branches
    (`@ | {a: @, b: @} | {a: @, b: @} | ...`) stands for more text than any memory holds,
    and nesting may be deeper than the interpreter's stack."""
    out = bytearray()
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):  # punctuation and keys, already encoded
            out += item
        elif isinstance(item, dict):
            pieces: list[Any] = [b"{"]
            for index, (key, inner) in enumerate(item.items()):
                pieces += [b"," if index else b"", _scalar(str(key)) + b":", inner]
            pieces.append(b"}")
            stack.extend(reversed(pieces))
        elif isinstance(item, list | tuple):
            pieces = [b"["]
            for index, inner in enumerate(item):
                pieces += [b"," if index else b"", inner]
            pieces.append(b"]")
            stack.extend(reversed(pieces))
        else:
            out += _scalar(item)
        if len(out) > limit:
            return bytes(out[:limit]), False
    return bytes(out), True


def _scalar(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits, lone surrogates (escaped), what JSON has not
        try:
            return json.dumps(value).encode()
        except (TypeError, ValueError):
            return json.dumps(repr(value)).encode()
