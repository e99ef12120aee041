"""Every long-lived loop of a worker rides out whatever its step raises (item 4 of #8): a Redis
failover's READONLY, OOM under `noeviction`, BUSY, a lost connection, or a plain bug. Each loop
logs a streak of failures once, backs off, goes on, and logs the recovery once (a claim loop's
hand-back of a lost claim's token, and `vtwatch dev` ending when its worker dies, are in
test_worker_units.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.exceptions import ConnectionError, ReadOnlyError, ResponseError

from service.settings import Settings
from service.store.keys import Keys
from service.store.queue import Claim, Claimed, LeasedQueue
from tests.fakes import until
from worker import partitions, process, retry
from worker.leases import LeaseKeeper
from worker.loop import ClaimLoop
from worker.partitions import Assignment

# What a bad day throws at a loop, in this order; the last is a bug, not a Redis state.
FAULTS: list[Exception] = [
    ReadOnlyError("You can't write against a read only replica."),
    ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ResponseError("BUSY Redis is busy running a script."),
    ConnectionError("Connection reset by peer"),
    RuntimeError("a bug"),
]


class Faulty:
    """Raises each of `faults` on its first calls, then answers `result`."""

    def __init__(self, result: Any, faults: list[Exception] = FAULTS) -> None:
        self.result = result
        self.faults = list(faults)
        self.calls = 0
        self.successes = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.faults:
            raise self.faults.pop(0)
        self.successes += 1
        return self.result(*args, **kwargs) if callable(self.result) else self.result


def streak_logs(caplog: pytest.LogCaptureFixture, what: str) -> tuple[int, int]:
    """(warnings that a streak began, notes that it ended) for the loop step `what`."""
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if what in r.getMessage()]
    began = sum(level == logging.WARNING and "failed" in text for level, text in messages)
    ended = sum("works again" in text for _, text in messages)
    return began, ended


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "outage_backoff", lambda failures: 0.01)


class FaultyQueue(LeasedQueue):
    """A queue whose every call fails through `FAULTS` first; claims hand out one item each."""

    def __init__(self) -> None:
        self.keys = Keys()
        self.claimed = 0

        def one(*args: Any) -> Claim:
            self.claimed += 1
            item = f"w{self.claimed}"
            return Claim(0, None, [Claimed(item, args[2], {"id": item})])  # type: ignore[typeddict-item]

        self.claims = Faulty(one)
        self.extends = Faulty(lambda items, _: [True] * len(items))

    async def claim(self, *args: Any, **kwargs: Any) -> Claim:
        result: Claim = self.claims(*args, **kwargs)
        return result

    async def extend(self, items: list[Claimed], lease_seconds: float) -> list[bool]:
        result: list[bool] = self.extends(items, lease_seconds)
        return result

    async def release(self, items: list[Claimed], delay: float = 0.0) -> None:
        return None


async def test_the_lease_keeper_rides_out_any_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    queue = FaultyQueue()
    keeper = LeaseKeeper(queue, 0.15, "poller")  # a tick every 50 ms
    claimed = Claimed("w1", "t", {"id": "w1"})  # type: ignore[typeddict-item]
    keeper.hold(claimed)
    stop = asyncio.Event()
    running = asyncio.create_task(keeper.run(stop))

    await until(lambda: queue.extends.successes >= 2)

    assert not running.done()
    assert not keeper.taken(claimed)  # still held, extended by the calls that worked
    assert streak_logs(caplog, "poller: extending leases") == (1, 1)
    stop.set()
    await running


class Counting(ClaimLoop):
    name = "counting"

    def __init__(self, queue: LeasedQueue) -> None:
        super().__init__(queue, concurrency=4, lease_seconds=30)
        self.handled: list[str] = []

    async def handle(self, claimed: Claimed) -> None:
        self.handled.append(claimed.id)


async def test_the_claim_loop_rides_out_any_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    queue = FaultyQueue()
    loop = Counting(queue)
    claiming = asyncio.create_task(loop._claim_until_stopped())

    await until(lambda: len(loop.handled) >= 3)

    assert not claiming.done()
    assert queue.claims.calls == len(FAULTS) + queue.claims.successes
    assert streak_logs(caplog, "counting: claiming") == (1, 1)
    loop.stop()
    await claiming


async def test_the_retention_sweep_rides_out_any_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(process, "SWEEP_INTERVAL", 0.02)

    class Store:
        def __init__(self) -> None:
            self.sweeps = Faulty(0)

        async def forget_expired(self) -> int:
            swept: int = self.sweeps()
            return swept

    store = Store()
    sweeping = asyncio.create_task(process.Worker(Settings())._sweep(store))  # type: ignore[arg-type]

    await until(lambda: store.sweeps.successes >= 2)

    assert not sweeping.done()
    assert streak_logs(caplog, "retention sweep") == (1, 1)
    sweeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweeping


async def test_the_roster_heartbeat_rides_out_any_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(partitions, "BEAT_SECONDS", 0.02)

    class Roster:
        def __init__(self) -> None:
            self.beats = Faulty(lambda worker, ttl: [worker, "other"])

        async def beat(self, worker: str, ttl: float) -> list[str]:
            live: list[str] = self.beats(worker, ttl)
            return live

        async def leave(self, worker: str) -> None:
            return None

    roster = Roster()
    assignment = Assignment(roster, 8)  # type: ignore[arg-type]
    stop = asyncio.Event()
    beating = asyncio.create_task(assignment.run(stop))

    await until(lambda: roster.beats.successes >= 1)

    assert not beating.done()
    assert 0 < len(assignment.own) < 8  # the map from the beat that worked: shared with "other"
    assert streak_logs(caplog, "worker roster heartbeat") == (1, 1)
    stop.set()
    await beating
