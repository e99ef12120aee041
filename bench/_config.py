"""The worker benchmark's knobs (one run's, from the command line) and its progress log."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Config:
    watches: int = 20_000
    concurrency: int = 256
    per_host_concurrency: int | None = None  # None: the same as concurrency
    repeats: int = 3
    processes: int = 1  # above 1: also `vtwatch worker --processes N` in each repeat
    warmup: float = 2.0
    window: float = 10.0
    lateness_period: float = 1.0
    lateness_window: float = 10.0
    memory_watches: int = 100_000
    profile: str | None = None  # "wall" or "cpu": the profiler's clock
    shared_redis: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"

    @property
    def host_limit(self) -> int:
        return self.per_host_concurrency or self.concurrency


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the table or the JSON."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers of at least 1 ("1,12,64")."""
    return tuple(positive_int(part) for part in text.split(","))
