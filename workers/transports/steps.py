"""The steps of an exchange with a mail server, and the recorder the transports report them to.

One client per protocol runs every exchange; a send reports its steps to QUIET, which records nothing and lets
a failure go on to the caller with the step it happened in, and the Test action reports them to a Checkup
(workers.diagnosis), which records each one. So the Test action is a send with the recorder switched on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn

from deskmail.workers.transports.base import Recorder, TransportFailure  # noqa: F401 - the recorder's interface

DISCOVER = "autodiscover"
RESOLVE, CONNECT, TLS, CAPABILITIES = "name resolution", "TCP connect", "TLS", "capabilities"
TOKEN, AUTHENTICATION, SENDER, SEND = "token", "authentication", "sender", "send"

Advice = str | Callable[[TransportFailure], str]


@dataclass
class Note:
    """What a step's body tells about it when it passes."""

    detail: str = ""


def attributed(name: str, failure: TransportFailure, advice: str = "") -> TransportFailure:
    """failure, named after the step it happened in and with advice when it has none of its own."""
    if failure.step is None:
        failure.step = name
    if advice and not failure.advice:
        failure.advice = advice
    return failure


class Quiet:
    """The recorder of a real send: keeps nothing; a failed step raises its TransportFailure, step named."""

    recording = False

    def passed(self, name: str, detail: str) -> None:
        """Nothing to keep."""

    def failed_with(self, name: str, failure: TransportFailure, advice: str = "") -> NoReturn:
        """Raise failure, named after the step."""
        raise attributed(name, failure, advice)

    @contextmanager
    def step(self, name: str, advice: Advice = "") -> Iterator[Note]:
        """Run the body; a TransportFailure leaves named after the step, with the step's advice."""
        try:
            yield Note()
        except TransportFailure as failure:
            attributed(name, failure, advice(failure) if callable(advice) else advice)
            raise


QUIET = Quiet()
