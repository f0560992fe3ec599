"""Connection reuse: one open session per sending account and thread, dropped when it goes bad."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

S = TypeVar("S")


@dataclass
class _Entry(Generic[S]):
    session: S
    last_used: float
    uses: int = 0


class SessionCache(Generic[S]):
    """Per-thread cache of open sessions; sessions idle too long or used too often are renewed."""

    def __init__(self, close: Callable[[S], None], max_idle: float = 30.0, max_uses: int = 1000) -> None:
        self._close = close
        self.max_idle = max_idle
        self.max_uses = max_uses
        self._local = threading.local()

    def _entries(self) -> dict[Hashable, _Entry[S]]:
        entries = getattr(self._local, "entries", None)
        if entries is None:
            entries = self._local.entries = {}
        return entries

    def get(self, key: Hashable, open_session: Callable[[], S]) -> tuple[S, bool]:
        """(session, reused): the cached session for key, or a newly opened one."""
        entries = self._entries()
        entry = entries.get(key)
        now = time.monotonic()
        if entry and (now - entry.last_used > self.max_idle or entry.uses >= self.max_uses):
            self.discard(key)
            entry = None
        if entry is None:
            entry = entries[key] = _Entry(open_session(), now)
            reused = False
        else:
            reused = True
        entry.last_used = now
        entry.uses += 1
        return entry.session, reused

    def discard(self, key: Hashable) -> None:
        """Close and forget the session for key (after an error, or to renew it)."""
        entry = self._entries().pop(key, None)
        if entry is not None:
            self._close(entry.session)

    def clear(self) -> None:
        """Close every session of the calling thread."""
        for key in list(self._entries()):
            self.discard(key)
