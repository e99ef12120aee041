"""The rooms of the code (issue 18, Layout; docs: STYLE.md): who may import whom.

- `service/store/` speaks Redis and nothing else: no FastAPI, Starlette or aiohttp.
- `service/api/` is the FastAPI app: it imports `service.store`, never `worker`.
- `worker/` imports `service.store` and `client`, never `service.api`.
- `client/` (the library users install, and the SSRF guard both the API and the worker use)
  imports nothing of the service's: no `service`, `worker`, FastAPI or Redis.

Every import statement is read with `ast` (those inside functions and under `TYPE_CHECKING`
too), relative imports resolved to absolute names. A violation the code had when the rule was
written is listed in `KNOWN_VIOLATIONS`, by file and imported module, so that any new one fails.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (room, forbidden module prefixes)
RULES: dict[str, tuple[str, ...]] = {
    "service/store": ("fastapi", "starlette", "aiohttp", "service.api", "worker"),
    "service/api": ("worker",),
    "worker": ("service.api",),
    "client": ("service", "worker", "fastapi", "starlette", "redis"),
}
# The composition root, the one module that may import everything (STYLE.md).
COMPOSITION_ROOTS = frozenset({"worker/cli.py", "worker/dev.py"})  # `vtwatch`, `vtwatch dev`

# issue 18 follow-up: each entry is a (file, imported module) the rules forbid but the code did
# when they were written; remove it when it is fixed (the test then keeps it fixed).
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def package_of(path: Path) -> str:
    """The package a relative import in `path` starts from."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1])


def imported(source: str, package: str) -> Iterator[str]:
    """Every module a source file of `package` imports, absolute. `from a import b` counts as
    an import of `a`, and of `a.b` too (b may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def forbidden_in(room: str, source: str, package: str) -> set[str]:
    """The modules `source` imports that `room` may not: `from a import b` reports `a` if `a`
    is forbidden, else `a.b` if that is."""
    prefixes = RULES[room]
    hits = {m for m in imported(source, package) if is_under(m, prefixes)}
    return {m for m in hits if not any(m.startswith(other + ".") for other in hits)}


def is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for room in RULES:
        for path in sorted((ROOT / room).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in COMPOSITION_ROOTS:
                continue
            for module in forbidden_in(room, path.read_text(), package_of(path)):
                found.add((path.relative_to(ROOT).as_posix(), module))
    return found


def test_no_new_violations() -> None:
    new = violations() - KNOWN_VIOLATIONS
    assert not new, f"imports across the rooms' walls (see STYLE.md): {sorted(new)}"


def test_known_violations_still_exist() -> None:
    """An entry of KNOWN_VIOLATIONS the code no longer has is removed from the list, so that it
    cannot hide a later one."""
    gone = KNOWN_VIOLATIONS - violations()
    assert not gone, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(gone)}"


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("service/store/x.py", "import fastapi\n", {"fastapi"}),
        ("service/store/x.py", "from starlette.types import ASGIApp\n", {"starlette.types"}),
        ("service/store/x.py", "def f():\n    import aiohttp.web\n", {"aiohttp.web"}),
        ("service/store/x.py", "from ..api import schemas\n", {"service.api"}),
        ("service/store/x.py", "from .keys import Keys\nimport redis\n", set()),
        ("service/api/routes/x.py", "from ...store.watches import Store\n", set()),
        ("service/api/x.py", "from worker.spec import SpecCache\n", {"worker.spec"}),
        ("service/api/x.py", "import worker\n", {"worker"}),
        ("worker/x.py", "from service.api.schemas import full_spec\n", {"service.api.schemas"}),
        ("worker/x.py", "from service import api, settings\n", {"service.api"}),
        ("worker/x.py", "from service.store.watches import Store\n", set()),
    ],
)
def test_rules_catch(path: str, source: str, expected: set[str]) -> None:
    """The checker itself, on a file of the room at `path` holding `source`."""
    room = next(room for room in RULES if path.startswith(room + "/"))
    assert forbidden_in(room, source, package_of(ROOT / path)) == expected
