"""How the worker's long-lived loops ride out errors: back off, log a streak of failures once."""

from __future__ import annotations

import logging
import random

from redis.exceptions import RedisError

from client.backoff import BackoffPolicy

_OUTAGE = BackoffPolicy(
    initial_wait_time=0.1, backoff_factor=2, jitter=0, jitter_ratio=0.2, max_interval=5.0
)
_rng = random.Random()


def outage_backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed store calls."""
    return _OUTAGE.delay(failures, _rng)


class FailureStreak:
    """Consecutive failures of one loop step. Any exception counts (a Redis failover's READONLY,
    OOM under `noeviction`, BUSY, a lost connection, a bug): the first of a streak is logged with
    its context, the rest only at debug level, and the recovery once."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count a failure; returns how long to back off."""
        self.failures += 1
        delay = outage_backoff(self.failures)
        if self.failures == 1:
            self.logger.warning(
                "%s failed (%s: %s); retrying with backoff",
                self.what,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                exc_info=not _expected(exc),
            )
        else:
            self.logger.debug("%s failed again (%d in a row): %s", self.what, self.failures, exc)
        return delay

    def succeeded(self) -> None:
        if self.failures:
            self.logger.info("%s works again after %d failures", self.what, self.failures)
            self.failures = 0


def _expected(exc: BaseException) -> bool:
    """Store errors are expected in passing states; anything else gets a traceback."""
    return isinstance(exc, RedisError | OSError)
