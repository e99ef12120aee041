"""`CappedDict`: the workers' notes per host or tenant (budget credit, failure streaks, what was
logged), bounded in memory by forgetting them all at once when full."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class CappedDict(dict[K, V]):
    """A dict of at most `max_size` entries: storing a new key when full clears it first (what
    it notes is cheap to learn again; hosts or tenants beyond the cap cost no memory)."""

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.max_size and key not in self:
            self.clear()
        super().__setitem__(key, value)
