"""The scheduler: timed work that must not wait in the broker (retries, takeovers, auto resume).

Every pass is a handful of SKIP LOCKED statements, so two schedulers running at once do no harm.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from deskmail.workers import metrics
from deskmail.workers.config import Config
from deskmail.workers.control import BULK_STALLED_AFTER, Controller
from deskmail.workers.errors import StoreUnavailable
from deskmail.workers.handing import Enqueue, hand_on, hand_on_due  # noqa: F401 - hand_on_due stays importable here
from deskmail.workers.runtime import Runtime
from deskmail.workers.store import Store

log = logging.getLogger(__name__)

Extra = Callable[[], dict[str, int]]


def heartbeat_step(store: Store) -> Extra:
    """The scheduler's heartbeat: one row per scheduler process, read by health checks and metrics."""
    from deskmail.workers.logcontext import HOST
    name = f"{HOST}:{os.getpid()}"

    def beat() -> dict[str, int]:
        store.record_heartbeat(name)
        return {}
    return beat


def auto_resume_step(store: Store, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Extra:
    """The scheduler's auto-resume step: at rollover, after a limit change, whenever quota frees up."""
    return lambda: {"auto_resumed": sum(store.auto_resume(clock()).values())}


def stalled_control_step(controller: Controller, seconds: float = BULK_STALLED_AFTER) -> Extra:
    """The backstop of accepted bulk actions: one nobody reported progress on for `seconds` goes on here."""
    return lambda: {"control_moved": controller.finish_stalled(seconds)}


@dataclass
class Scheduler:
    """One pass hands due retries, lost wake-ups and mails of lost workers back to their transport queues."""

    store: Store
    enqueue: Enqueue
    config: Config
    extras: list[Extra] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def for_config(cls, config: Config, runtime: Runtime) -> "Scheduler":
        """A scheduler publishing through a Dramatiq broker of its own."""
        from deskmail.workers.admit import Admitter
        from deskmail.workers.app import build_broker, enqueuer
        from deskmail.workers.attachments import clean_up_step
        from deskmail.workers.deadletters import drain_step
        broker = build_broker(config)
        enqueue = enqueuer(broker)
        store = runtime.store
        controller = Controller(store, config.control_key, config.control_max_age, enqueue)
        return cls(store, enqueue, config,
                   [heartbeat_step(store), auto_resume_step(store),
                    drain_step(config.amqp_url, Admitter(store, enqueue)),
                    clean_up_step(store, config.attachment_retention),
                    stalled_control_step(controller)])

    def tick(self) -> dict[str, int]:
        """One pass; returns how many mails each step touched. A step that fails is logged and
        skipped, so one bad mail or dead letter never stops the others."""
        steps: list[Extra] = [
            *self.extras,
            lambda: {"due": hand_on_due(self.store, self.enqueue)},
            lambda: {"stale_queued": hand_on(self.enqueue, self.store.take_stale_queued(self.config.stale_after))},
            lambda: {"taken_over": hand_on(self.enqueue, self.store.take_over(self.config.takeover_grace))},
        ]
        done: dict[str, int] = {}
        for step in steps:
            try:
                done.update(step())
            except StoreUnavailable:  # the store says so once, not every pass
                done["failed_steps"] = done.get("failed_steps", 0) + 1
            except Exception:  # noqa: BLE001 - the next step and the next pass still run
                log.exception("scheduler step failed; the other steps go on")
                done["failed_steps"] = done.get("failed_steps", 0) + 1
        metrics.scheduler_pass({k: n for k, n in done.items() if k != "failed_steps"})
        if any(done.values()):
            log.info("scheduler pass: %s", done)
        return done

    def run_forever(self) -> None:
        """Pass every DESKMAIL_SCHEDULER_INTERVAL seconds until SIGTERM or SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        log.info("scheduler running every %s s", self.config.scheduler_interval)
        if self.config.metrics_port:
            from deskmail.workers.endpoint import ledger_store, serve_in_thread
            serve_in_thread(self.config, ledger_store(self.config))
        while not self.stop.is_set():
            self.tick()
            self.stop.wait(self.config.scheduler_interval)
