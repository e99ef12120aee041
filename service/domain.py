"""Watch states and identifiers."""

from __future__ import annotations

import secrets
import time
from enum import StrEnum


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


def new_watch_id() -> str:
    """`w_` + 12 hex digits of milliseconds + 16 random hex digits: ids sort by creation time."""
    return f"w_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
