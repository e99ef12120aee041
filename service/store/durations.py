"""Learned job durations per upstream in Redis, shared by every worker (issue 11, item 3).

One hash per upstream (`client.learned.upstream_key` of the status URL; `Keys.durations`, a
hash tag of its own) holds a `client.learned.DurationHistogram` in a form whose decay costs
O(1) per sample: each bin's weight times a scale that grows by `1 / decay` with every sample
(`lua/durations_record.lua`, atomic, so workers may record at once). Divided by the scale, the
weights are those `DurationHistogram.add` would hold after the same samples. The histogram's
math (bins, spreading, decay, quantiles, validation) stays in `client.learned`; this module
only stores and reads it.

Memory: one field per bin that jobs ended in, plus two (at most 203 fields, ~5 KiB; 1,000
lognormal jobs, sigma 0.6, took 87 fields, 2.1 KiB). A histogram expires `ttl_seconds` after its
last sample (the watches' retention), so there are never more of them than upstreams with a job
completed within the retention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from client.errors import ConfigurationError
from client.learned import FORMAT_VERSION, HALF_LIFE, DurationHistogram, spread

from .keys import Keys
from .scripts import ScriptCall, load_scripts, text

RENORMALIZE_ABOVE = 1e9  # the scale reaches this every ~3,000 samples at the default half-life
SMALLEST_WEIGHT = 1e-6  # samples' worth; lighter bins are dropped when renormalizing
SCALE, UPSTREAM = "scale", "upstream"

Sample = tuple[float, float]  # a job ended within (first, second] seconds of its registration


class DurationBook:
    """The upstreams' histograms: recorded through a script call for the caller's pipeline,
    read in one round trip."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, ttl_seconds: float, half_life: float = HALF_LIFE
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.half_life = half_life
        self.growth = 1 / DurationHistogram(half_life).decay
        self._record = load_scripts(redis, ("durations_record",))["durations_record"]

    def record_call(self, upstream: str, samples: Sequence[Sample]) -> ScriptCall:
        """Add `samples` of one upstream (as a script call; its result is how many)."""
        args: list[Any] = [upstream, self.growth, RENORMALIZE_ABOVE, SMALLEST_WEIGHT, self.ttl_ms]
        for ended_after, ended_by in samples:
            shares = spread(ended_after, ended_by)
            args.append(len(shares))
            for index, share in shares:
                args += [index, share]
        return self._record, [self.keys.durations(upstream)], args

    async def read(self, upstreams: Sequence[str]) -> list[dict[str, str]]:
        """The stored hashes of `upstreams` (empty: none), in one round trip; `durations_of`
        makes histograms of them."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for upstream in upstreams:
                pipe.hgetall(self.keys.durations(upstream))
            found: list[dict[Any, Any]] = await pipe.execute()
        return [{text(k): text(v) for k, v in fields.items()} for fields in found]


def durations_of(
    fields: Mapping[str, str], half_life: float = HALF_LIFE
) -> DurationHistogram | None:
    """The histogram a stored hash holds (None: no samples yet); `ConfigurationError` for
    anything `durations_record.lua` would not have written."""
    if not fields:
        return None
    scale = _number(fields.get(SCALE), SCALE)
    if not scale > 0:
        raise ConfigurationError(f"duration histogram: scale must be positive, got {scale!r}")
    weights = {
        name: _number(value, name) / scale
        for name, value in fields.items()
        if name not in (SCALE, UPSTREAM)
    }
    return DurationHistogram.from_dict({"v": FORMAT_VERSION, "w": weights}, half_life)


def _number(value: str | None, name: str) -> float:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigurationError(f"duration histogram: {name!r:.40} is not a number")
    return number
