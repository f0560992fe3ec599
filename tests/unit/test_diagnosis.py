"""The Test action's step record and the advice it gives."""

from __future__ import annotations

import pytest

from deskmail.workers.diagnosis import SEND, Checkup, Status, Stop
from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.smtp_session import login_advice as _login_advice


def test_a_failure_in_a_step_records_it_with_advice_and_stops():
    checkup = Checkup()
    with checkup.step("name resolution") as note:
        note.detail = "mail.example.org is 192.0.2.1"
    with pytest.raises(Stop):
        with checkup.step("authentication", "check the password"):
            raise TransportFailure(Outcome.CONFIGURATION, "535 5.7.8 refused")
    assert [(s.name, s.status) for s in checkup.steps] == [("name resolution", Status.PASSED),
                                                           ("authentication", Status.FAILED)]
    assert checkup.steps[-1].advice == "check the password" and not checkup.accepted


def test_only_a_passed_send_counts_as_accepted():
    checkup = Checkup()
    checkup.passed("TLS", "TLSv1.3")
    assert not checkup.accepted
    checkup.passed(SEND, "250 OK")
    assert checkup.accepted and checkup.as_dict()["accepted"] is True


def test_the_outcome_gives_the_advice_when_the_step_has_none():
    checkup = Checkup()
    with pytest.raises(Stop):
        with checkup.step(SEND):
            raise TransportFailure(Outcome.AMBIGUOUS, "no reply after the end of DATA")
    assert "recipient's mailbox" in checkup.steps[-1].advice


@pytest.mark.parametrize("reply, advice", [
    ("authentication as 'desk' refused: 535 5.7.30 Basic authentication is not supported", "exchange_oauth2"),
    ("XOAUTH2 as 'desk@example.org' refused: 535 5.7.8 Username and Password not accepted", "delegation"),
    ("authentication as 'desk' refused: 535 5.7.8 Authentication credentials invalid", "username and password"),
])
def test_a_refused_login_is_explained_by_the_servers_words(reply, advice):
    assert advice in _login_advice(TransportFailure(Outcome.CONFIGURATION, reply))
