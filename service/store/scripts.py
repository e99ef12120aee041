"""Lua scripts and server time: the generic helpers every owner of a script uses.

A script lives in `lua/` and is registered once (`load_scripts`); calls of several scripts go in
one pipeline (`run_scripts`). The scripts read the time from the server (`now_ms()` in
`_prelude.lua`); `server_time_ms` is the same clock from Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .codec import WEBHOOK_DEFAULTS

# The stored document's defaults, for the scripts' `webhook_of` (their one home is the codec).
_DEFAULTS_LUA = f"local WEBHOOK_DEFAULTS = cjson.decode('{json.dumps(WEBHOOK_DEFAULTS)}')\n"

# A script, its keys and its arguments: one EVALSHA of a pipeline (`run_scripts`).
ScriptCall = tuple[AsyncScript, list[str], list[Any]]


def load_scripts(
    redis: aioredis.Redis, names: tuple[str, ...], preludes: tuple[str, ...] = ("_prelude",)
) -> dict[str, AsyncScript]:
    """Register the named scripts of `lua/` once, each after `_prelude.lua` (shared helpers)
    and any other `preludes`; calls use EVALSHA (reloading if flushed)."""
    folder = resources.files("service.store") / "lua"
    prelude = _DEFAULTS_LUA + "".join((folder / f"{name}.lua").read_text() for name in preludes)
    return {
        name: redis.register_script(prelude + (folder / f"{name}.lua").read_text())
        for name in names
    }


async def run_scripts(
    redis: aioredis.Redis, calls: Sequence[ScriptCall], *, raise_from: int | None = None
) -> list[Any]:
    """EVALSHA each call in one pipeline; scripts the server lost (a restart) are loaded and
    only those calls run again (NOSCRIPT means they did not run). An error of a call before
    index `raise_from` (default: any) is raised; later calls' errors are returned instead."""
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            await redis.script_load(script.script)
        # The calls run again keep their order: those that were before `raise_from` come first.
        again_raise_from = None if raise_from is None else sum(i < raise_from for i in missing)
        again = await run_scripts(redis, [calls[i] for i in missing], raise_from=again_raise_from)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    limit = len(results) if raise_from is None else raise_from
    for result in results[:limit]:
        if isinstance(result, Exception):
            raise result
    return results


async def server_time_ms(redis: aioredis.Redis) -> int:
    """Redis server time in milliseconds (what the scripts' `now_ms()` reads)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def text(value: str | bytes) -> str:
    """A Redis reply as text, whether the client decodes replies or not (garbage replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
