"""Long console jobs run in a thread of the console process, their progress kept in the store so that
the page can poll any console instance: the Test action's steps as they arrive (run on a worker of
the project's transport queue, through producers.control.run_test, as the command does), a bulk
action's batches."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable

from deskmail.producers import control
from deskmail.producers.console.actions import BATCH, Actions
from deskmail.workers.runtime import Runtime

log = logging.getLogger(__name__)
STATE_OF = {"backlog.resume": "backlog", "backlog.suspend": "backlog", "suspended.resume": "suspended",
            "failed.retry": "failed", "ambiguous.resend": "ambiguous", "ambiguous.close": "ambiguous"}


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
        """Run the Test action with the form's settings on a worker of the transport queue; its steps stream.

        `then` runs only when the test mail was accepted (Update after a passing test); its text ends the summary.
        """
        job = uuid.uuid4()
        self.store.add_console_job(job, "test", f"Test of project {project} ({document['mail_service']})", user,
                                   project)
        self._thread(self._run_test, job, project, document, to, then, user)
        return job

    def _run_test(self, job: uuid.UUID, project: str, document: dict[str, Any], to: str | None,
                  then: Callable[[], str] | None, user: str = "console") -> None:
        """The same path as `deskmail settings test`: a worker of the project's transport queue runs it."""
        def progress(answer: dict[str, Any]) -> None:
            steps = answer.get("steps") or []
            self.store.console_job_progress(job, len(steps), steps)
        try:
            fields = control.settings_fields(self.runtime.box, project, document)
            answer = control.run_test(self.actions.publisher, self.store, self.runtime.config.control_key,
                                      self.runtime.config.control_timeout, project, to, fields, progress, user)
        except Exception as exc:  # noqa: BLE001 - shown on the page rather than lost in a thread
            log.exception("console test of %s failed", project)
            self.store.finish_console_job(job, 0, [], False, f"the test could not run: {type(exc).__name__}: {exc}")
            return
        steps, accepted = answer.get("steps") or [], bool(answer.get("accepted"))
        last = steps[-1]["name"] if steps else "the start"
        summary = "the test mail was accepted" if accepted else f"FAILED at {last}"
        if answer.get("error"):
            summary += f": {answer['error']}"
        if then is not None:
            summary += f"; {then()}" if accepted else "; nothing was updated"
        if answer.get("host"):
            summary += f" (tested on {answer['host']})"
        self.store.finish_console_job(job, len(steps), steps, accepted, summary)

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
