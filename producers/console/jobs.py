"""Long console jobs run in a thread of the console process, their progress kept in the store so that
the page can poll any console instance: the Test action's steps as they arrive, a bulk action's batches."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import asdict
from typing import Any, Callable

from producers.console.actions import BATCH, Actions
from workers.diagnosis import Checkup, Step, Stop, Status
from workers.runtime import Runtime
from workers.selftest import self_test

log = logging.getLogger(__name__)
STATE_OF = {"backlog.resume": "backlog", "backlog.suspend": "backlog", "suspended.resume": "suspended",
            "failed.retry": "failed", "ambiguous.resend": "ambiguous", "ambiguous.close": "ambiguous"}


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


class Jobs:
    """Starts console jobs and records how far they got."""

    def __init__(self, runtime: Runtime, actions: Actions) -> None:
        self.runtime, self.actions = runtime, actions

    @property
    def store(self):  # noqa: ANN201 - workers.store.Store
        """The store."""
        return self.runtime.store

    def start_test(self, user: str, project: str, document: dict[str, Any], to: str | None,
                   then: Callable[[], str] | None = None) -> uuid.UUID:
        """Run the Test action (workers.selftest.self_test) with the form's settings; its steps stream.

        `then` runs only when the test mail was accepted (Update after a passing test); its text ends the summary.
        """
        job = uuid.uuid4()
        self.store.add_console_job(job, "test", f"Test of project {project} ({document['mail_service']})", user,
                                   project)
        self._thread(self._run_test, job, project, document, to, then)
        return job

    def _run_test(self, job: uuid.UUID, project: str, document: dict[str, Any], to: str | None,
                  then: Callable[[], str] | None) -> None:
        steps = lambda s: [asdict(step) for step in s]  # noqa: E731
        checkup = RecordedCheckup(lambda s: self.store.console_job_progress(job, len(s), steps(s)))
        try:
            self_test(self.runtime, project, to, document, checkup)
        except Exception as exc:  # noqa: BLE001 - shown on the page rather than lost in a thread
            log.exception("console test of %s failed", project)
            self.store.finish_console_job(job, len(checkup.steps), steps(checkup.steps), False,
                                          f"the test could not run: {type(exc).__name__}: {exc}")
            return
        last = checkup.steps[-1].name if checkup.steps else "the start"
        summary = "the test mail was accepted" if checkup.accepted else f"FAILED at {last}"
        if then is not None:
            summary += f"; {then()}" if checkup.accepted else "; nothing was updated"
        self.store.finish_console_job(job, len(checkup.steps), steps(checkup.steps), checkup.accepted, summary)

    def start_bulk(self, user: str, action: str, ids: list[str] | None, filters: dict[str, str | None],
                   total: int, label: str) -> uuid.UUID:
        """Apply `action` to the given ids, or to every mail matching `filters`, in batches of control messages."""
        job = uuid.uuid4()
        self.store.add_console_job(job, "bulk", f"{label} of {total} mail(s)", user, filters.get("project"), total)
        self._thread(self._run_bulk, job, user, action, ids, filters)
        return job

    def _run_bulk(self, job: uuid.UUID, user: str, action: str, ids: list[str] | None,
                  filters: dict[str, str | None]) -> None:
        done, steps, ok = 0, [], True
        try:
            for batch in self._batches(action, ids, filters):
                answer = self.actions.send(user, action, ids=batch)
                done += answer.touched
                steps.append({"name": f"{len(batch)} mail(s)", "status": "passed" if answer.ok else "failed",
                              "detail": answer.text, "advice": ""})
                self.store.console_job_progress(job, done, steps)
                if not answer.ok:
                    ok = False
                    break
        except Exception as exc:  # noqa: BLE001 - the page shows where it stopped instead of polling forever
            log.exception("console bulk %s stopped", action)
            ok = False
            steps.append({"name": "stopped", "status": "failed", "detail": f"{type(exc).__name__}: {exc}",
                          "advice": "the mails not done yet are still where they were; try again"})
        self.store.finish_console_job(job, done, steps, ok, f"{done} mail(s) done" + ("" if ok else ", then stopped"))

    def _batches(self, action: str, ids: list[str] | None, filters: dict[str, str | None]):
        if ids is not None:
            for start in range(0, len(ids), BATCH):
                yield ids[start:start + BATCH]
            return
        after = 0  # keyset paging on seq stays right while earlier batches leave the state
        while True:
            rows = self.store.console_mail_page(STATE_OF[action], filters, after, BATCH)
            if not rows:
                return
            after = rows[-1]["seq"]
            yield [str(r["event_id"]) for r in rows]

    def _thread(self, target: Callable, *args: Any) -> None:
        threading.Thread(target=target, args=args, name="console-job", daemon=True).start()
