"""The Test action's record: named steps with their outcome, stopping at the first failure.

Every transport diagnoses its own route with the same vocabulary of steps, so an admin reads one
shape of report whatever the mail service: (autodiscover,) name resolution, TCP connect, TLS, capabilities,
token, authentication, sender, send.
"""

from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, NoReturn

from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.steps import (  # noqa: F401 - the step names are this report's vocabulary
    AUTHENTICATION, CAPABILITIES, CONNECT, DISCOVER, RESOLVE, SEND, SENDER, TLS, TOKEN, Advice, Note)

ADVICE = {
    Outcome.TRANSIENT: "the server or network is failing for now; try again later, or check that nothing "
                       "between here and the server blocks the connection",
    Outcome.PERMANENT: "the server refused the mail; its words above say why",
    Outcome.CONFIGURATION: "fix the project's mail settings",
    Outcome.AMBIGUOUS: "the server did not answer after the message was sent; look in the recipient's mailbox "
                       "before trying again",
    Outcome.QUOTA: "the provider's sending quota for this account is used up; wait until it resets",
}


class Status(enum.StrEnum):
    """How a step ended."""

    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    """One step of a Test action; detail and advice never hold a secret."""

    name: str
    status: Status
    detail: str
    advice: str = ""
    outcome: str = ""  # a failed step's classification, the same a send would get (workers.transports.base)


class Stop(Exception):
    """A step failed: the checkup ends here."""


def _unchanged(text: str) -> str:
    return text


@dataclass
class Checkup:
    """The steps of one Test action, in order; `scrub` masks the project's secrets in what peers said
    (workers.scrub), before a step keeps it."""

    steps: list[Step] = field(default_factory=list)
    scrub: Callable[[str], str] = _unchanged
    recording = True  # a workers.transports.steps.Recorder that keeps every step
    _outcome: str = field(default="", repr=False)

    def passed(self, name: str, detail: str) -> None:
        """Record a passed step."""
        self.steps.append(Step(name, Status.PASSED, self.scrub(detail)))

    def failed(self, name: str, detail: str, advice: str) -> NoReturn:
        """Record a failed step and end the checkup."""
        outcome, self._outcome = self._outcome, ""
        self.steps.append(Step(name, Status.FAILED, self.scrub(detail), self.scrub(advice), outcome))
        raise Stop(name)

    def failed_with(self, name: str, failure: TransportFailure, advice: str = "") -> NoReturn:
        """Record the step the failure names (else `name`) as failed by it, with the failure's own advice, else
        the given one, else the outcome's, and end the checkup (a send raises the same failure, step named)."""
        self._outcome = str(failure.outcome)  # failed() keeps its signature: subclasses override it
        self.failed(failure.step or name, failure.problem, failure.advice or advice or ADVICE[failure.outcome])

    @contextmanager
    def step(self, name: str, advice: Advice = "") -> Iterator[Note]:
        """Run a step's body: a TransportFailure fails the step (see failed_with)."""
        note = Note()
        try:
            yield note
        except TransportFailure as failure:
            self.failed_with(name, failure, advice(failure) if callable(advice) else advice)
        self.passed(name, note.detail)

    @property
    def accepted(self) -> bool:
        """True only when the last step is a passed send."""
        return bool(self.steps) and self.steps[-1].name == SEND and self.steps[-1].status is Status.PASSED

    def as_dict(self) -> dict:
        """The steps, machine-readably."""
        return {"accepted": self.accepted, "steps": [asdict(step) for step in self.steps]}
