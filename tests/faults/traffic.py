"""Load for the fault tests: events to publish, and a publisher that keeps trying, as a careful client does."""

from __future__ import annotations

import threading
import time
from typing import Callable

from tests.integration.helpers import event
from deskmail.workers.errors import BrokerError


def events(n: int, project: str = "alpha", label: str = "fault", **extra: object) -> list[dict]:
    """n valid notification events for project, numbered in their subjects."""
    return [event(project, subject=f"{label} {i}", **extra) for i in range(n)]


class Steady(threading.Thread):
    """Publishes events one by one; an unconfirmed one is published again (safe: event_id dedupes).

    `confirmed` holds the ids whose publish returned; `on_confirmed(count)` runs after each.
    """

    def __init__(self, publisher, items: list[dict], *, give_up_after: float = 60.0,  # noqa: ANN001
                 on_confirmed: Callable[[int], None] | None = None, pause: float = 0.0) -> None:
        super().__init__(name="steady-publisher", daemon=True)
        self.publisher, self.items = publisher, items
        self.give_up_after, self.on_confirmed, self.pause = give_up_after, on_confirmed, pause
        self.confirmed: list[str] = []
        self.errors: list[str] = []
        self.longest = 0.0

    def run(self) -> None:
        deadline = time.monotonic() + self.give_up_after
        for item in self.items:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    self.confirmed.append(self.publisher.publish(item))
                    break
                except BrokerError as exc:
                    self.errors.append(str(exc)[:200])
                    time.sleep(0.2)
                finally:
                    self.longest = max(self.longest, time.monotonic() - started)
            else:
                return
            if self.on_confirmed is not None:
                self.on_confirmed(len(self.confirmed))
            if self.pause:
                time.sleep(self.pause)


class Once:
    """A hook that runs its action on the nth call only (counted across threads)."""

    def __init__(self, nth: int, action: Callable[[], object]) -> None:
        self.nth, self.action = nth, action
        self.calls = 0
        self.fired_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, *_: object) -> None:
        with self._lock:
            self.calls += 1
            fire = self.calls == self.nth
        if fire:
            self.action()
            self.fired_at = time.monotonic()
