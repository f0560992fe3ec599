"""What every transport shares: outcomes, the failure type, envelopes and the interface."""

from __future__ import annotations

import abc
import email.utils
import enum
import uuid
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from contextlib import AbstractContextManager
from typing import Any, Callable, NoReturn, Protocol

from deskmail.schemas.addresses import ascii_domain_form
from deskmail.workers.attachments import Attachment
from deskmail.workers.constants import MailService
from deskmail.workers.errors import DeskmailError
from deskmail.workers.settings import ProjectSettings



class Outcome(enum.StrEnum):
    """The one error model of all four mail services."""

    TRANSIENT = "transient"          # retry with backoff
    PERMANENT = "permanent"          # failed, with the server's words
    CONFIGURATION = "configuration"  # failed; the project's settings need a fix
    AMBIGUOUS = "ambiguous"          # no reply after the end of DATA: maybe delivered
    QUOTA = "quota"                  # the provider's own limit: pause the project


class TransportFailure(DeskmailError):
    """A send that did not (or may not have) gone through, classified; the texts hold no secret.

    `step` names the Test-action step it fails and `advice` what to change, when the raiser knows better than
    the caller and the outcome; `problem` is what the Test action shows next to the advice.
    """

    def __init__(self, outcome: Outcome, detail: str, *, refused: dict[str, str] | None = None,
                 retry_after: float | None = None, step: str | None = None, advice: str | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.refused = refused or {}
        self.retry_after = retry_after
        self.step = step
        self.advice = advice
        self.problem = detail


def advised(outcome: Outcome, problem: str, advice: str = "", *, step: str | None = None,
            retry_after: float | None = None) -> TransportFailure:
    """A failure whose detail, which a mail's record keeps, ends with what to change."""
    failure = TransportFailure(outcome, f"{problem}; {advice}" if advice else problem, step=step,
                               advice=advice or None, retry_after=retry_after)
    failure.problem = problem  # the Test action shows the advice apart
    return failure


@dataclass(frozen=True)
class Envelope:
    """A built message and who it goes to."""

    event_id: uuid.UUID
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    attachments: tuple[Attachment, ...] = ()  # what data carries, for transports that upload them apart (Graph)
    without_attachments: Callable[[], bytes] | None = None  # the same message without them, built on demand

    @property
    def attachment_bytes(self) -> int:
        """The attachments' size, decoded."""
        return sum(len(a.content) for a in self.attachments)

    def blind_copies(self) -> list[str]:
        """The recipients that the message's To and Cc headers do not name (its Bcc)."""
        head = BytesHeaderParser(policy=compat32).parsebytes(self.data)
        named = email.utils.getaddresses(head.get_all("To", []) + head.get_all("Cc", []))
        seen = {address.lower() for _, address in named}  # the headers write domains as punycode
        return [r for r in self.recipients if ascii_domain_form(r).lower() not in seen]


@dataclass(frozen=True)
class Delivered:
    """The server took the message; `refused` lists recipients it turned down one by one."""

    detail: str
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


class Recorder(Protocol):
    """Where a client reports the steps of an exchange (workers.transports.steps): a Checkup records them,
    QUIET does not."""

    @property
    def recording(self) -> bool:
        """True when passed steps are kept (the client may then spend a little on describing them)."""

    def passed(self, name: str, detail: str) -> None:
        """A step passed."""

    def failed_with(self, name: str, failure: TransportFailure, advice: str = "") -> NoReturn:
        """A step failed by failure: raises."""

    def step(self, name: str, advice: Any = "") -> AbstractContextManager[Any]:
        """Run a step's body; a TransportFailure out of it fails the step."""


class Transport(abc.ABC):
    """One mail service. Implementations live one per module under workers/transports/."""

    service: MailService

    @abc.abstractmethod
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        """Deliver one message, or raise TransportFailure."""

    def diagnose(self, settings: ProjectSettings, envelope: Envelope, checkup: Recorder) -> None:
        """The Test action: send envelope through the same client as send, on fresh connections and tokens,
        reporting each step to checkup (a workers.diagnosis.Checkup, whose failed step raises diagnosis.Stop)."""
        raise NotImplementedError(f"the {self.service} transport has no Test action")

    def close_shared(self) -> None:
        """Close what every thread of the process shares (once they have all stopped)."""

    def close(self) -> None:
        """Close the connections this transport keeps open in the calling thread."""
