"""Learned schedules: poll where an upstream's jobs usually end, skip where they almost never do.

Per upstream (host and path template, `upstream_key`) a `DurationHistogram` keeps a bounded
summary of how long jobs took to complete: fixed log-spaced bins (8 per octave, 0.125 s to
~48 days), each sample spread over the interval in which the job is known to have ended, all
weights decayed by half every `half_life` samples so the summary follows change.

`LearnedSchedule.planned_delay` proposes the next delay (Keller's inspection rule): the gap `g`
for which `g * P(the job ends within g | still pending)` equals a target, so every poll covers
about the same expected detection delay - long gaps where jobs seldom end, dense polls where
they usually do. The target, `latency_share` of `max_interval` or `MEDIAN_SHARE` of the median
job if less, sets the trade between requests and detection delay. It proposes nothing (the
blind backoff applies) with fewer than `MIN_SAMPLES` effective samples or once the job has
outlived almost every job seen; `client.backoff.next_poll_delay` applies the proposal within
the policy's bounds (floor, `max_interval`, a last poll at the deadline) and only to plain
pending answers (no hints).

`ScheduleHistory` is what the library's caller keeps and persists (`to_json`/`from_json`); the
watch service keeps the same histograms in Redis, one per upstream, shared by its workers
(`service.store.durations`: samples spread by `spread`, decayed by `DurationHistogram.decay`, read
back through `from_dict`).
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .backoff import BackoffPolicy
from .errors import ConfigurationError

FORMAT_VERSION = 1
BINS_PER_OCTAVE = 8
FIRST_EDGE = 0.125  # seconds; bin 0 is [0, FIRST_EDGE)
OCTAVES = 25  # the last edge is FIRST_EDGE * 2**25 s, about 48 days; longer jobs count there
BIN_COUNT = 1 + OCTAVES * BINS_PER_OCTAVE
EDGES = (0.0, *(FIRST_EDGE * 2 ** (i / BINS_PER_OCTAVE) for i in range(BIN_COUNT)))

MIN_SAMPLES = 20.0  # effective samples before a histogram steers anything
HALF_LIFE = 100.0  # samples after which an old sample weighs half
# The expected detection delay each poll covers: this share of max_interval (the caller's
# latency tolerance) ...
LATENCY_SHARE = 0.3
# ... or of the median job, if that is less: a short job noticed seconds late is noticed late.
MEDIAN_SHARE = 0.2
LEARNED_JITTER = 0.1  # planned delays are shortened by up to this share: fleets do not align
TAIL_SAMPLES = 0.5  # with less weight than this still to end, the job is an outlier: go blind
MAX_UPSTREAMS = 256
MAX_KEY_CHARS = 512
MAX_WEIGHT = 1e9  # no honest histogram weighs this much; a persisted one that does is garbage
BIN_DIGITS = len(str(BIN_COUNT - 1))  # the longest bin name

_ID_LIKE = re.compile(r"[0-9a-fA-F]{8,}|[0-9a-fA-F-]{32,36}|[\w.~-]*\d[\w.~-]*")
_VERSION = re.compile(r"v\d+(\.\d+)*", re.IGNORECASE)


def upstream_key(status_url: str) -> str:
    """`host[:port]/path/template` of a status URL: id-like segments become `{id}`, the query
    and fragment go, so every job of one upstream endpoint shares one histogram."""
    parts = urlsplit(status_url)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    segments = [
        "{id}" if _ID_LIKE.fullmatch(s) and not _VERSION.fullmatch(s) else s
        for s in parts.path.split("/")
    ]
    return (host + "/".join(segments))[:MAX_KEY_CHARS]


def _excerpt(value: object) -> str:
    """A short repr of untrusted data for an error message (an int of thousands of digits
    has none)."""
    try:
        return f"{value!r:.40}"
    except ValueError:
        return f"<{type(value).__name__}>"


def _bin(seconds: float) -> int:
    return min(BIN_COUNT - 1, max(0, bisect.bisect_right(EDGES, seconds) - 1))


def spread(ended_after: float, ended_by: float) -> list[tuple[int, float]]:
    """The bins of one job that ended within (ended_after, ended_by] seconds of its start, each
    with its share of the sample (evenly over that interval; the shares sum to 1)."""
    low, high = sorted((max(0.0, ended_after), max(0.0, ended_by)))
    if not math.isfinite(high):
        raise ValueError(f"a duration must be finite, got {ended_by!r}")
    high = min(high, EDGES[-1])
    low = min(low, high)
    first, last = _bin(low), _bin(high)
    if high - low < 1e-9 or first == last:
        return [(first, 1.0)]
    shares = []
    for i in range(first, last + 1):
        overlap = min(high, EDGES[i + 1]) - max(low, EDGES[i])
        if overlap > 0:
            shares.append((i, overlap / (high - low)))
    return shares


class DurationHistogram:
    """Decayed weights of job durations in fixed log-spaced bins (see the module docstring)."""

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        if not (math.isfinite(half_life) and half_life > 0):
            raise ConfigurationError(f"half_life must be positive, got {half_life!r}")
        self.half_life = half_life
        self.weights = [0.0] * BIN_COUNT
        self._ended_by: list[float] | None = None  # cumulative weights at EDGES, cached

    @property
    def samples(self) -> float:
        """Effective number of samples (decayed)."""
        return sum(self.weights)

    @property
    def decay(self) -> float:
        """What every older weight is multiplied by when a sample is added."""
        return float(2 ** (-1 / self.half_life))

    def add(self, ended_after: float, ended_by: float) -> None:
        """Count one job that ended within (ended_after, ended_by] seconds of its start: older
        samples decay, and the new one is spread evenly over that interval (`spread`)."""
        shares = spread(ended_after, ended_by)
        decay = self.decay
        self.weights = [w * decay for w in self.weights]
        for i, share in shares:
            self.weights[i] += share
        self._ended_by = None

    def merged(self, other: DurationHistogram) -> DurationHistogram:
        """The sum of two histograms (e.g. two workers' local counts), with this half-life."""
        merged = DurationHistogram(self.half_life)
        merged.weights = [a + b for a, b in zip(self.weights, other.weights, strict=True)]
        return merged

    def ended_by(self, seconds: float) -> float:
        """Weight of the jobs that ended within `seconds` (uniform within a bin)."""
        if self._ended_by is None:
            cumulative = [0.0]
            for w in self.weights:
                cumulative.append(cumulative[-1] + w)
            self._ended_by = cumulative
        if seconds >= EDGES[-1]:
            return self._ended_by[-1]
        i = _bin(seconds)
        share = (seconds - EDGES[i]) / (EDGES[i + 1] - EDGES[i])
        return self._ended_by[i] + self.weights[i] * max(0.0, share)

    def quantile(self, q: float) -> float:
        """The duration by which a share `q` of the jobs ended (0.0 for an empty histogram)."""
        wanted = q * self.samples
        self.ended_by(0.0)  # fills the cache
        assert self._ended_by is not None
        i = max(0, bisect.bisect_left(self._ended_by, wanted) - 1)
        if i >= BIN_COUNT or self.weights[i] <= 0:
            return EDGES[min(i, BIN_COUNT)]
        share = (wanted - self._ended_by[i]) / self.weights[i]
        return EDGES[i] + min(1.0, max(0.0, share)) * (EDGES[i + 1] - EDGES[i])

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON-ready form: the non-zero bins only."""
        weights = {str(i): float(f"{w:.6g}") for i, w in enumerate(self.weights) if w >= 1e-4}
        return {"v": FORMAT_VERSION, "w": weights}

    @classmethod
    def from_dict(cls, data: object, half_life: float = HALF_LIFE) -> DurationHistogram:
        """Rebuild from `to_dict`'s form; anything else (whatever a corrupted store or file
        holds) is a `ConfigurationError`."""
        if not isinstance(data, dict) or set(data) != {"v", "w"}:
            raise ConfigurationError("a duration histogram is an object with 'v' and 'w'")
        if data["v"] != FORMAT_VERSION:
            raise ConfigurationError(f"unknown duration histogram version: {_excerpt(data['v'])}")
        if not isinstance(data["w"], dict):
            raise ConfigurationError("'w' of a duration histogram must be an object")
        histogram = cls(half_life)
        for index, weight in data["w"].items():
            # Digits checked before int(): a string of thousands of digits would not convert.
            if not (
                isinstance(index, str)
                and index.isascii()
                and index.isdigit()
                and len(index) <= BIN_DIGITS
                and int(index) < BIN_COUNT
            ):
                raise ConfigurationError(f"not a histogram bin: {_excerpt(index)}")
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigurationError(f"bin {index}: weight must be a number")
            # Compared before any conversion: NaN fails it, and so does an int too big for a float.
            if not 0 <= weight <= MAX_WEIGHT:
                raise ConfigurationError(f"bin {index}: weight out of range")
            histogram.weights[int(index)] = float(weight)
        if histogram.samples > MAX_WEIGHT:
            raise ConfigurationError("duration histogram: total weight out of range")
        return histogram


@dataclass(frozen=True, slots=True)
class LearnedSchedule:
    """Plans polls from one upstream's histogram (a `client.backoff.Planner`)."""

    durations: DurationHistogram
    latency_share: float = LATENCY_SHARE

    @property
    def trained(self) -> bool:
        return self.durations.samples >= MIN_SAMPLES

    def planned_delay(
        self, policy: BackoffPolicy, elapsed: float, remaining: float, rng: random.Random
    ) -> float | None:
        """The delay after a pending answer `elapsed` seconds into the job, within
        [policy.floor, policy.max_interval]; None: too few samples or an outlier job (go blind).
        `remaining` (to the deadline) is the caller's to apply."""
        if not self.trained:
            return None
        ended = self.durations.ended_by(elapsed)
        pending = self.durations.samples - ended
        if pending < TAIL_SAMPLES:
            return None
        target = min(
            self.latency_share * policy.max_interval,
            MEDIAN_SHARE * self.durations.quantile(0.5),
        )

        def covered(gap: float) -> float:  # gap x P(ends within gap | pending now)
            return gap * (self.durations.ended_by(elapsed + gap) - ended) / pending

        low, high = policy.floor, max(policy.floor, policy.max_interval)
        if covered(high) <= target:
            gap = high
        elif covered(low) >= target:
            gap = low
        else:
            for _ in range(24):  # covered() grows with the gap: bisect to ~6e-8 of the range
                middle = (low + high) / 2
                low, high = (middle, high) if covered(middle) < target else (low, middle)
            gap = high
        return max(policy.floor, gap * (1 - rng.uniform(0, LEARNED_JITTER)))


class ScheduleHistory:
    """How long jobs took on each upstream seen, for `VideoTranslationClient(history=...)`.

    Share one between clients to learn across jobs; persist it with `to_json()` and
    `ScheduleHistory.from_json()`. Holds at most `max_upstreams` upstreams (the least recently
    updated go first).
    """

    def __init__(self, *, half_life: float = HALF_LIFE, max_upstreams: int = MAX_UPSTREAMS) -> None:
        if max_upstreams < 1:
            raise ConfigurationError(f"max_upstreams must be at least 1, got {max_upstreams!r}")
        DurationHistogram(half_life)  # validates half_life
        self.half_life = half_life
        self.max_upstreams = max_upstreams
        self._by_upstream: OrderedDict[str, DurationHistogram] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_upstream)

    def durations(self, status_url: str) -> DurationHistogram | None:
        return self._by_upstream.get(upstream_key(status_url))

    def schedule(self, status_url: str) -> LearnedSchedule | None:
        """The planner for a status URL, or None while its upstream has too few samples."""
        durations = self.durations(status_url)
        schedule = LearnedSchedule(durations) if durations is not None else None
        return schedule if schedule is not None and schedule.trained else None

    def record(self, status_url: str, ended_after: float, ended_by: float) -> None:
        """A job at `status_url` completed within (ended_after, ended_by] seconds of its start."""
        key = upstream_key(status_url)
        histogram = self._by_upstream.pop(key, None) or DurationHistogram(self.half_life)
        histogram.add(ended_after, ended_by)
        self._by_upstream[key] = histogram
        while len(self._by_upstream) > self.max_upstreams:
            self._by_upstream.popitem(last=False)

    def to_json(self) -> str:
        upstreams = {key: h.to_dict() for key, h in self._by_upstream.items()}
        return json.dumps({"v": FORMAT_VERSION, "upstreams": upstreams}, separators=(",", ":"))

    @classmethod
    def from_json(
        cls, text: str | bytes, *, half_life: float = HALF_LIFE, max_upstreams: int = MAX_UPSTREAMS
    ) -> ScheduleHistory:
        """Load what `to_json` wrote; anything else raises `ConfigurationError`."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigurationError("a schedule history must be JSON") from None
        if not isinstance(data, dict) or set(data) != {"v", "upstreams"}:
            raise ConfigurationError("a schedule history is an object with 'v' and 'upstreams'")
        if data["v"] != FORMAT_VERSION or not isinstance(data["upstreams"], dict):
            raise ConfigurationError("unknown schedule history version or shape")
        if len(data["upstreams"]) > max_upstreams:
            raise ConfigurationError(f"a schedule history holds at most {max_upstreams} upstreams")
        history = cls(half_life=half_life, max_upstreams=max_upstreams)
        for key, histogram in data["upstreams"].items():
            if len(key) > MAX_KEY_CHARS:
                raise ConfigurationError("an upstream key is too long")
            history._by_upstream[key] = DurationHistogram.from_dict(histogram, half_life)
        return history
