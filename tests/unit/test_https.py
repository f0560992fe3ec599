"""The HTTPS every HTTP transport shares: https only, and a lost answer told from a request that never went out."""

from __future__ import annotations

import uuid

import pytest
import requests
import urllib3.exceptions

from deskmail.workers.transports import graph
from deskmail.workers.transports.base import Envelope, Outcome, TransportFailure
from deskmail.workers.transports.https import AnswerLost, PolicySession

MAILBOX = graph.Mailbox("https://graph.example.com", "desk@example.org")
ENVELOPE = Envelope(uuid.uuid4(), "desk@example.org", ("to@example.com",),
                    b"To: to@example.com\r\nSubject: x\r\n\r\nbody\r\n", "<x@example.org>")


class FailingSession(requests.Session):
    """A session whose every request fails with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def request(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        raise self.error


def graph_failure(error: Exception) -> TransportFailure:
    with pytest.raises(TransportFailure) as caught:
        graph.send(FailingSession(error), MAILBOX, ENVELOPE, lambda: "token", lambda: None)
    return caught.value


def test_a_redirect_to_plain_http_is_not_followed():
    with PolicySession() as session, pytest.raises(TransportFailure) as caught:
        session.send(requests.Request("GET", "http://169.254.169.254/latest").prepare())
    assert caught.value.outcome is Outcome.CONFIGURATION and "not an https URL" in caught.value.detail


def test_a_graph_answer_lost_after_the_request_went_out_is_ambiguous():
    lost = urllib3.exceptions.ProtocolError("Connection aborted.", AnswerLost("RemoteDisconnected: closed"))
    failure = graph_failure(requests.ConnectionError(lost))
    assert failure.outcome is Outcome.AMBIGUOUS and "may or may not" in failure.detail


def test_a_graph_request_that_never_went_out_is_transient():
    broken = urllib3.exceptions.ProtocolError("Connection aborted.", BrokenPipeError(32, "Broken pipe"))
    failure = graph_failure(requests.ConnectionError(broken))
    assert failure.outcome is Outcome.TRANSIENT and "before the message was sent" in failure.detail
