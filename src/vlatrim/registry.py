"""Name -> implementation registries (scorers, pruning methods, adapters, policies, ...).

Each method lives in its own module and registers itself with a decorator, so adding one touches no
other file. Duplicate names are rejected at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vlatrim.errors import VlatrimError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations of one kind.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"block scorer"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second use of the same name raises."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises VlatrimError listing the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise VlatrimError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """Names in registration order (for registries whose entries are asked in turn)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
