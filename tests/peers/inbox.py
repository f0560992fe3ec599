"""A thread-safe record of what a local peer received, with waiting."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items appended by a peer's server thread and read or awaited by the test thread."""

    def __init__(self, what: str = "item") -> None:
        self._what = what
        self._items: list[T] = []
        self._cond = threading.Condition()

    def add(self, item: T) -> None:
        """Append an item and wake waiters."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[T]:
        """Return a copy of the items so far, in arrival order."""
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        """Forget every item."""
        with self._cond:
            self._items.clear()

    def wait_for(self, count: int, timeout: float) -> list[T]:
        """Block until at least `count` items arrived and return them; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(f"got {len(self._items)} {self._what}(s), expected {count} within {timeout}s")
            return list(self._items)
