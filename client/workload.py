"""What the simulator's traffic looks like: job durations drawn from a mix, and a rate limit
(a token bucket) on the requests it answers. Used by `client.simulator` and the benchmarks."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIXES = ("lognormal", "bimodal", "loguniform")


@dataclass(frozen=True, slots=True)
class DurationMix:
    """A distribution of job durations in seconds.

    `lognormal`: median `median`, log-space deviation `sigma`; `bimodal`: that with probability
    1 - `long_share`, else lognormal with median `long_median` and the same `sigma`;
    `loguniform`: `exp(uniform(ln low, ln high))`.
    """

    kind: str
    median: float = 30.0
    sigma: float = 0.6
    long_median: float = 180.0
    long_share: float = 0.3
    low: float = 1.0
    high: float = 55.0

    def __post_init__(self) -> None:
        if self.kind not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}")
        if not all(math.isfinite(v) for v in (self.median, self.sigma, self.long_median)):
            raise ValueError("median, sigma and long_median must be finite")
        if not (self.median > 0 and self.long_median > 0 and self.sigma >= 0):
            raise ValueError("medians must be positive and sigma not negative")
        if not 0.0 <= self.long_share <= 1.0:
            raise ValueError("long_share must be in [0, 1]")
        if not (0 < self.low <= self.high < math.inf):
            raise ValueError("loguniform needs 0 < min_duration <= max_duration")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        long = self.kind == "bimodal" and rng.random() < self.long_share
        return (self.long_median if long else self.median) * math.exp(rng.gauss(0.0, self.sigma))

    def describe(self) -> str:
        if self.kind == "loguniform":
            return f"log-uniform {self.low:g}-{self.high:g} s"
        shape = f"lognormal median {self.median:g} s, sigma {self.sigma:g}"
        if self.kind == "lognormal":
            return shape
        return f"bimodal: {shape}; {100 * self.long_share:g} % median {self.long_median:g} s"


class TokenBucket:
    """`rate` requests per second with bursts of up to `burst`, on the simulator's clock."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated_at = burst, now

    def take(self, now: float) -> float:
        """Take one token: 0.0, or the seconds until one is available (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
