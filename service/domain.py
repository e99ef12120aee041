"""Watch states and identifiers."""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class WatchState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset(
    {WatchState.COMPLETED, WatchState.ERROR, WatchState.TIMEOUT, WatchState.CANCELLED}
)


class WebhookState(StrEnum):
    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


PARTITION_DIGITS = 3
MAX_PARTITIONS = 16**PARTITION_DIGITS


def new_watch_id(now_ms: int, partition: int = 0) -> str:
    """`w_` + 12 hex digits of milliseconds (Redis time) + 13 random hex digits + the watch's
    partition in 3 hex digits: ids sort by creation time, whichever API host made them, and
    name their partition (`partition_of`) with no lookup."""
    return f"w_{now_ms:012x}{secrets.token_hex(7)[:13]}{partition:0{PARTITION_DIGITS}x}"


def partition_of(watch_id: str, partitions: int) -> int:
    """The partition a watch id names; an id that names none (not ours) gets partition 0, where
    its document is simply not found."""
    if partitions == 1:
        return 0
    try:
        return int(watch_id[-PARTITION_DIGITS:], 16) % partitions
    except ValueError:
        return 0


class WebhookDoc(TypedDict):
    """A watch's webhook delivery, as stored."""

    state: str  # a WebhookState
    attempts: int
    last_status_code: int | None
    cycle_attempts: int  # attempts since the (re)start of the retry schedule
    redeliver: NotRequired[bool]  # a manual retry asked for while an attempt was in flight


class WatchDoc(TypedDict):
    """A watch as stored in Redis (JSON): what the API renders and the workers update.

    Times are Redis server milliseconds; `spec` is the registration (status_url, webhook_url,
    policy, metadata) as JSON text, immutable.
    """

    id: str
    tenant: str
    spec: str
    state: str  # a WatchState
    reason: str | None
    attempts: int
    last_result: str | None
    last_error: str | None
    progress: float | None
    created_at: int
    updated_at: int
    last_polled_at: int | None
    next_poll_at: int | None
    deadline: int
    finished_at: int | None
    result: Any  # what the job produced (the upstream's `result` path), on a terminal watch
    result_truncated: bool
    webhook: WebhookDoc
    cancel_request: NotRequired[str]  # the request id of the cancel that ended it
    pending_at: NotRequired[int]  # when the last poll that saw the job pending was sent
    pushed: NotRequired[bool]  # a callback came before its first poll: poll at once
