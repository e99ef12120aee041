"""How watch documents are stored: compact JSON with nulls and defaults left out (a pending
watch's document is most of its memory), filled back in when read, so every reader sees a
whole `WatchDoc`. The Lua scripts read and write the same compact form (a missing field is a
null or its default there too).

The spec (the registration, `WatchDoc.spec`) is stored the same way: its fields and policy
fields at their defaults are left out, `full_spec` puts them back. `watch_json` is a document
as the API shows it (`service.api.schemas.Watch`) and webhooks carry it."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from client.backoff import BACKOFF_FACTOR, INITIAL_WAIT_TIME, JITTER, SERVICE_MAX_INTERVAL
from client.presets import DEFAULT_PRESET

from ..domain import WatchDoc, WebhookState

DEFAULTS: dict[str, Any] = {
    "reason": None,
    "attempts": 0,
    "last_result": None,
    "last_error": None,
    "progress": None,
    "last_polled_at": None,
    "next_poll_at": None,
    "finished_at": None,
    "result": None,
    "result_truncated": False,
}
WEBHOOK_DEFAULTS: dict[str, Any] = {
    "state": WebhookState.NONE.value,
    "attempts": 0,
    "last_status_code": None,
    "cycle_attempts": 0,
}
# A watch's polling policy, as the API's `Policy` defaults it (the same values, in its order).
POLICY_DEFAULTS: dict[str, Any] = {
    "initial_wait_time": INITIAL_WAIT_TIME,
    "backoff_factor": BACKOFF_FACTOR,
    "jitter": JITTER,
    "max_interval": SERVICE_MAX_INTERVAL,
    "max_wait_time": 3600.0,
    "max_attempts": None,
    "adaptive": True,
}
_DEFAULT_ITEMS = tuple(DEFAULTS.items())
_KEPT = object()  # the "default" of a field that has none: unequal to every value


def pack(doc: WatchDoc | dict[str, Any]) -> bytes:
    """The stored JSON of `doc`, UTF-8: fields at their default (null, 0, no webhook) left out."""
    stored = dict(doc)
    for key, default in _DEFAULT_ITEMS:
        if key in stored and stored[key] == default:
            del stored[key]
    webhook = cast(dict[str, Any] | None, stored.pop("webhook", None))
    if webhook and webhook != WEBHOOK_DEFAULTS:  # (one C comparison for most documents)
        kept = {k: v for k, v in webhook.items() if v != WEBHOOK_DEFAULTS.get(k, _KEPT)}
        if kept:  # never an empty webhook: the scripts read a missing one as the defaults
            stored["webhook"] = kept
    return orjson.dumps(stored)


def unpack(raw: str | bytes) -> WatchDoc:
    """A whole document from its stored JSON."""
    stored = orjson.loads(raw)
    doc = {**DEFAULTS, **stored}
    doc["webhook"] = {**WEBHOOK_DEFAULTS, **stored.get("webhook", {})}
    return cast(WatchDoc, doc)


def full_spec(spec_json: str) -> dict[str, Any]:
    """A stored spec (`WatchCreate.spec`) with the defaults it leaves out filled back in."""
    spec = json.loads(spec_json)
    return {
        "webhook_url": None,
        "metadata": {},
        **spec,
        "policy": {**POLICY_DEFAULTS, **spec.get("policy", {})},
    }


def timestamp(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso_time(ms: int | None) -> str | None:
    """A time of a document (Redis milliseconds) as the API writes it: ISO 8601, UTC, `Z` —
    `timestamp(ms).isoformat()` with `Z` for `+00:00` (microseconds only when not zero). An
    integer's text is made from its second's (a few cached: a page's times share them) and
    its milliseconds: a watch has six times, a page of 50 three hundred."""
    if type(ms) is int and 0 <= ms < _FAST_MS:
        seconds, millis = divmod(ms, 1000)
        text = _second_text(seconds)
        return f"{text}.{millis:03d}000Z" if millis else f"{text}Z"
    when = timestamp(ms)
    return None if when is None else when.isoformat().replace("+00:00", "Z")


_FAST_MS = 2**32 * 1000  # (2106) below, ms / 1000 is within half a microsecond: the same text


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]


def watch_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it and webhooks carry it: the JSON of
    `service.api.schemas.Watch` (its fields in its order, numbers of its types).

    What comes of the spec (immutable: a watch's registration) is read once per spec text
    (`_spec_view`, a few thousand kept) and shared by every answer made of it, nested objects
    included: the result is for sending, never to be changed in place."""
    status_url, webhook_url, metadata, policy, upstream = _spec_view(doc["spec"])
    webhook = doc["webhook"]
    progress = doc.get("progress")
    get = doc.get
    return {
        "id": doc["id"],
        "state": doc["state"],
        "reason": doc["reason"],
        "status_url": status_url,
        "webhook_url": webhook_url,
        "metadata": metadata,
        "policy": policy,
        "attempts": int(doc["attempts"]),
        "last_result": doc["last_result"],
        "last_error": doc["last_error"],
        "progress": None if progress is None else float(progress),
        "created_at": iso_time(get("created_at")),
        "updated_at": iso_time(get("updated_at")),
        "last_polled_at": iso_time(get("last_polled_at")),
        "next_poll_at": iso_time(get("next_poll_at")),
        "deadline": iso_time(get("deadline")),
        "finished_at": iso_time(get("finished_at")),
        "webhook": {
            "state": webhook["state"],
            "attempts": int(webhook["attempts"]),
            "last_status_code": webhook["last_status_code"],
        },
        "upstream": upstream,
        "result": get("result"),
        "result_truncated": bool(get("result_truncated")),
    }


@functools.lru_cache(maxsize=2048)
def _spec_view(
    spec_json: str,
) -> tuple[str, str | None, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """What `watch_json` shows of a stored spec: status_url, webhook_url, metadata, policy (of
    `Watch`'s types) and upstream."""
    spec = full_spec(spec_json)
    policy = spec["policy"]
    max_attempts = policy["max_attempts"]
    shown_policy = {
        **{name: float(policy[name]) for name in _FLOAT_POLICY},
        "max_attempts": None if max_attempts is None else int(max_attempts),
        "adaptive": policy["adaptive"],
    }
    upstream = upstream_json(spec.get("upstream"))
    return spec["status_url"], spec["webhook_url"], spec["metadata"], shown_policy, upstream


def upstream_json(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored spec's `upstream` as the API shows it: the headers' names, never their values
    (they are stored sealed, `SEALED_HEADERS`)."""
    if stored is None:
        return None
    shown = {**_UPSTREAM_DEFAULTS, **stored}
    shown["headers"] = {name: "***" for name in stored.get(HEADER_NAMES, ())}
    for field in _SEALED_FIELDS:
        shown.pop(field, None)
    return shown


# A stored spec's `upstream` keeps its headers sealed (`service.sealing`) and their names apart.
SEALED_HEADERS = "sealed_headers"
HEADER_NAMES = "header_names"
_SEALED_FIELDS = frozenset({SEALED_HEADERS, HEADER_NAMES})
# `service.api.schemas.UpstreamSpec`'s fields in its order, at their defaults (a stored spec
# leaves them out), so that GET and the webhook show the same `upstream`.
_UPSTREAM_DEFAULTS: dict[str, Any] = {
    "preset": DEFAULT_PRESET,
    "headers": {},
    "rules": None,
    "progress": None,
    "eta": None,
    "error": None,
    "result": None,
    "progress_scale": None,
}


_FLOAT_POLICY = ("initial_wait_time", "backoff_factor", "jitter", "max_interval", "max_wait_time")
