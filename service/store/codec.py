"""How watch documents are stored: compact JSON with nulls and defaults left out (a pending
watch's document is most of its memory), filled back in when read, so every reader sees a
whole `WatchDoc`. The Lua scripts read and write the same compact form (a missing field is a
null or its default there too)."""

from __future__ import annotations

from typing import Any, cast

import orjson

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
}
WEBHOOK_DEFAULTS: dict[str, Any] = {
    "state": WebhookState.NONE.value,
    "attempts": 0,
    "last_status_code": None,
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
