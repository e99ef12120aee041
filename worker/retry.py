"""How the worker rides out a Redis outage: which errors, and how long to back off."""

from __future__ import annotations

import random

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from client.backoff import BackoffPolicy

STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_OUTAGE = BackoffPolicy(
    initial_wait_time=0.1, backoff_factor=2, jitter=0, jitter_ratio=0.2, max_interval=5.0
)
_rng = random.Random()


def outage_backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed store calls."""
    return _OUTAGE.delay(failures, _rng)
