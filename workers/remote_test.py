"""The Test action on a transport worker: the worker that sends a project's mail also tests it.

The control actor keeps what to test (control_tests) and publishes only the request id to the
project's transport queue, for the actor `deskmail.<service>.test`; the worker that takes it runs
workers.selftest.self_test and records each step in the request's answer as it happens (the
command is notified on every commit), with the host that ran it. The row is taken once, so a
redelivered or forged message runs nothing.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable

from deskmail.workers.constants import MailService
from deskmail.workers.diagnosis import Checkup, Status, Step, Stop
from deskmail.workers.errors import SecretError
from deskmail.workers.runtime import Runtime
from deskmail.workers.selftest import self_test
from deskmail.workers.settings import merge_secrets

log = logging.getLogger(__name__)


class RecordedCheckup(Checkup):
    """A Checkup that reports every step the moment it is recorded."""

    def __init__(self, on_step: Callable[[list[Step]], None]) -> None:
        super().__init__()
        self._on_step = on_step

    def passed(self, name: str, detail: str) -> None:
        """Record a passed step and report it."""
        super().passed(name, detail)
        self._on_step(self.steps)

    def failed(self, name: str, detail: str, advice: str):  # noqa: ANN201 - NoReturn
        """Record a failed step, report it, and end the checkup."""
        self.steps.append(Step(name, Status.FAILED, self.scrub(detail), self.scrub(advice)))
        self._on_step(self.steps)
        raise Stop(name)


class SelfTestRunner:
    """Callable behind the `deskmail.<service>.test` actors."""

    def __init__(self, runtime: Runtime, max_age: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.runtime, self.max_age, self.clock = runtime, max_age, clock

    @property
    def host(self) -> str:
        """Where the test ran, as the command shows it."""
        return f"{socket.gethostname()} ({self.runtime.worker})"

    def __call__(self, request_id: str) -> None:
        """Run the Test action of request_id, if it is still waiting for a worker."""
        store = self.runtime.store
        test = store.take_control_test(str(request_id), self.runtime.worker)
        if test is None:
            log.info("Test action %s: nothing to run (taken before, or never requested)", str(request_id)[:64])
            return
        message, base = test["message"], {"project": test["project"], "mail_service": test["mail_service"],
                                          "host": self.host, "worker": self.runtime.worker}
        if (self.clock() - test["created_at"]).total_seconds() > self.max_age:
            self._finish(message, {**base, "ok": False, "error": "the test waited longer than "
                                   "DESKMAIL_CONTROL_MAX_AGE for a worker; it was not run"}, [])
            return
        try:
            document = self._document(test)
        except SecretError as exc:
            self._finish(message, {**base, "ok": False, "error": f"sealed_secrets: {exc} (the command and the "
                                   "workers need the same DESKMAIL_SECRET_KEYS)"}, [])
            return
        steps = lambda s: [asdict(step) for step in s]  # noqa: E731
        checkup = RecordedCheckup(lambda s: store.control_progress(
            message["request_id"], {**base, "ok": True, "running": True, "touched": 0, "steps": steps(s)}))
        store.control_progress(message["request_id"], {**base, "ok": True, "running": True, "touched": 0,
                                                       "steps": [], "note": f"running on {self.host}"})
        try:
            self_test(self.runtime, test["project"], test["to_address"], document, checkup,
                      attachment=test["attach"])
        except Exception as exc:  # noqa: BLE001 - the command shows it rather than waiting for nothing
            log.exception("Test action %s could not run", message["request_id"])
            self._finish(message, {**base, "ok": False, "error": f"the test could not run: {type(exc).__name__}: "
                                   f"{exc}"}, steps(checkup.steps))
            return
        self._finish(message, {**base, "ok": True, "accepted": checkup.accepted}, steps(checkup.steps))

    def _document(self, test: dict[str, Any]) -> dict[str, Any] | None:
        if test["settings"] is None:
            return None
        secrets = self.runtime.box.open(test["project"], test["sealed_secrets"].encode("ascii")) \
            if test["sealed_secrets"] else {}
        return merge_secrets(dict(test["settings"]), secrets)

    def _finish(self, message: dict[str, Any], answer: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        answer = {**answer, "running": False, "touched": 0, "steps": steps, "accepted": bool(answer.get("accepted"))}
        with self.runtime.store.atomic() as tx:
            tx.record_control(message, answer)


def declare_test_actors(broker, runtime: Runtime) -> None:  # noqa: ANN001 - dramatiq broker
    """Declare one Test actor on each transport queue (QueueGuard: it takes messages from that queue only)."""
    import dramatiq
    runner = SelfTestRunner(runtime, runtime.config.control_max_age)
    for service in MailService:
        dramatiq.Actor(runner, broker=broker, actor_name=service.queue.test_actor, queue_name=service.queue,
                       priority=0, options={"max_retries": 3, "min_backoff": 1_000, "max_backoff": 10_000,
                                            "time_limit": 900_000})


def self_test_dispatcher(broker) -> Callable[[MailService, str], None]:  # noqa: ANN001 - dramatiq broker
    """Publishes a Test message (the request id only) to a mail service's transport queue."""
    import dramatiq

    def dispatch(service: MailService, request_id: str) -> None:
        broker.enqueue(dramatiq.Message(queue_name=service.queue, actor_name=service.queue.test_actor,
                                        args=(str(request_id),), kwargs={}, options={"broker_priority": 9}))
    return dispatch
