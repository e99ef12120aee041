"""What Redis did over a window: `INFO commandstats` differences, split into what the worker
sends and what its Lua scripts run, per poll; and Redis's own CPU time (`INFO cpu`).

Redis counts each command a script runs as well as the EVALSHA that ran it: *top-level* =
EVALSHA/EVAL plus every command no script uses; *inside scripts* = the commands
`service/store/lua/*.lua` call.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis

SCRIPT_CALL = re.compile(r"redis\.call\(\s*'([A-Za-z]+)'")
TOP_LEVEL_SCRIPTS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall"})
OWN_COMMANDS = frozenset({"info"})  # what this benchmark sends during a window
CLAIM_COMMAND = "zrangebyscore"  # claim.lua runs it once per claim

CommandStats = dict[str, tuple[int, int]]  # command -> (calls, usec) since the server started


@dataclass(slots=True)
class CommandsPerPoll:
    top_level: dict[str, float]
    inside_scripts: dict[str, float]
    top_level_total: float
    all_total: float
    redis_usec_per_poll: float
    claims_per_poll: float
    watches_per_claim: float


async def command_stats(redis: aioredis.Redis) -> CommandStats:
    info = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


async def redis_cpu_seconds(redis: aioredis.Redis) -> float:
    """User + system CPU seconds of the Redis server."""
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def difference(a: CommandStats, b: CommandStats) -> tuple[dict[str, int], dict[str, int]]:
    """Calls and usec per command from `a` to `b`, without this benchmark's own commands."""
    calls, usec = {}, {}
    for name, (n, us) in b.items():
        n0, us0 = a.get(name, (0, 0))
        if n > n0 and name not in OWN_COMMANDS:
            calls[name], usec[name] = n - n0, us - us0
    return calls, usec


def claims(calls: dict[str, int]) -> int:
    """claim.lua runs (poller and dispatcher)."""
    return calls.get(CLAIM_COMMAND, 0)


def script_runs(calls: dict[str, int]) -> int:
    """EVALSHA/EVAL (and the like) sent."""
    return sum(calls.get(name, 0) for name in TOP_LEVEL_SCRIPTS)


def script_commands() -> frozenset[str]:
    """The Redis commands the store's Lua scripts call."""
    folder = resources.files("service.store") / "lua"
    names: set[str] = set()
    for item in folder.iterdir():
        if item.name.endswith(".lua"):
            names.update(m.lower() for m in SCRIPT_CALL.findall(item.read_text()))
    return frozenset(names)


def per_poll(polls: int, calls: dict[str, int], usec: dict[str, int]) -> CommandsPerPoll:
    """The commands of a window per poll, top-level and inside scripts, most frequent first."""
    in_scripts = script_commands()
    per = max(1, polls)
    top = {n: c / per for n, c in calls.items() if n in TOP_LEVEL_SCRIPTS or n not in in_scripts}
    inner = {n: c / per for n, c in calls.items() if n not in top}
    top_usec = sum(us for n, us in usec.items() if n in top)
    claimed = claims(calls)
    return CommandsPerPoll(
        dict(sorted(top.items(), key=lambda kv: -kv[1])),
        dict(sorted(inner.items(), key=lambda kv: -kv[1])),
        sum(top.values()),
        sum(top.values()) + sum(inner.values()),
        top_usec / per,
        claimed / per,
        polls / claimed if claimed else math.nan,
    )
