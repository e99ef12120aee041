"""JMESPath for status rules, made safe to run on behalf of strangers.

A rule is written by one tenant and evaluated by workers every tenant shares, so an expression
must not be able to make a poll spin. JMESPath can: `[@, @][] | [@, @][] | ...` doubles a list
at each stage (2^100 elements in 1 KiB of text), and nested multi-selects build trees whose
shared branches `to_string` or `==` walk exponentially. So:

* `compile_path` accepts the language less three things: the function `to_string` (use the value
  itself), comparisons of two computed values (one side of `==`, `<`... must be a literal:
  ``status == `"done"` `` is fine, `a == b` is not), and `contains` with a computed needle;
  and at most `MAX_NODES` syntax nodes;
* `search` counts its work (each node visited, each element a flatten produces, each character
  or element a function returns) and gives up
  past `WORK_BUDGET` with `TooMuchWork`: a 64 KiB body takes well under that. A `Budget` is
  shared by all the expressions run on one answer (the rules and hints of a StatusReader).
"""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

MAX_NODES = 256
WORK_BUDGET = 200_000
_REFUSED_FUNCTIONS = frozenset({"to_string"})


class TooMuchWork(Exception):
    """An expression did more work than any status body needs."""


class PathError(ValueError):
    """An expression that does not compile, or that rules do not allow (the message says)."""


def compile_path(text: str) -> ParsedResult:
    """`text` compiled, or PathError saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("must be a non-empty JMESPath expression")
    try:
        parsed = jmespath.compile(text)
    except JMESPathError as exc:
        raise PathError(f"not a JMESPath expression: {_first_line(exc)}") from None
    except (RecursionError, ValueError, TypeError):
        raise PathError("not a JMESPath expression") from None
    _check(parsed.parsed)
    return parsed


def _check(root: Any) -> None:
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise PathError(f"more than {MAX_NODES} syntax nodes")
        kind, children = node["type"], node.get("children", [])
        if kind == "function_expression":
            name = node["value"]
            if name in _REFUSED_FUNCTIONS:
                raise PathError(f"the function {name}() is not allowed in rules")
            if name == "contains" and len(children) == 2 and not _is_literal(children[1]):
                raise PathError("contains() needs a literal as its second argument")
        elif kind == "comparator" and not any(_is_literal(child) for child in children):
            raise PathError('a comparison needs a literal on one side (e.g. status == `"done"`)')
        stack.extend(child for child in children if isinstance(child, dict))


def _is_literal(node: Any) -> bool:
    return bool(node["type"] == "literal")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class Budget:
    """Work left (`WORK_BUDGET` to start with): one per answer, shared by every expression
    run on it, so that 32 rules and 4 hints cost at most what one expression may."""

    __slots__ = ("left",)

    def __init__(self, work: int = WORK_BUDGET) -> None:
        self.left = work


class _Budgeted(TreeInterpreter):
    """A TreeInterpreter that counts its work and stops when its budget is spent."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget

    def _spend(self, amount: int) -> None:
        self.budget.left -= amount
        if self.budget.left < 0:
            raise TooMuchWork

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        self._spend(1)
        return super().visit(node, *args, **kwargs)

    def visit_flatten(self, node: Any, value: Any) -> Any:
        """As jmespath's, its size spent before the list is built (not after: one flatten of
        a list of wide lists would build millions of elements first)."""
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        self._spend(sum(len(element) if isinstance(element, list) else 1 for element in base))
        merged: list[Any] = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    def visit_function_expression(self, node: Any, value: Any) -> Any:
        """A function's result is work too: `join('', [@, @])` repeated doubles a string at
        each stage without visiting more nodes."""
        result = super().visit_function_expression(node, value)
        if isinstance(result, str | list):
            self._spend(len(result))
        return result


def search(path: ParsedResult, document: Any, budget: Budget | None = None) -> Any:
    """What `path` gives on `document`; raises TooMuchWork (past `budget`, by default a
    fresh one), or whatever a function refuses (JMESPathError, ValueError...): the caller
    treats any exception as "no value"."""
    return _Budgeted(budget or Budget()).visit(path.parsed, document)
