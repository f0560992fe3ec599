"""The EWS error model: what exchangelib, requests and urllib3 raise, mapped to the one outcome model."""

from __future__ import annotations

import io
import ssl
import uuid

import pytest
import requests
import urllib3.exceptions
from exchangelib import errors

from deskmail.workers.diagnosis import AUTHENTICATION, SEND, SENDER
from deskmail.workers.transports import ews
from deskmail.workers.transports.base import Envelope, Outcome, TransportFailure
from deskmail.workers.transports.ews_http import Endpoint, HttpAnswer, policy
from deskmail.workers.transports.https import AnswerLost, Refused

ON_PREMISES = Endpoint("https://mail.example.com/EWS/Exchange.asmx")
ONLINE = Endpoint("https://outlook.office365.com/EWS/Exchange.asmx")
PASSWORD = ews.Password("EXAMPLE\\desk", "Canary-Pa55", "ntlm")
TOKEN = ews.Token("app-1", lambda: "canary-token", lambda: None)
MAILBOX = "desk@example.org"


def classify(exc: BaseException, endpoint: Endpoint = ON_PREMISES, auth=PASSWORD) -> ews.EwsFailure:
    return ews.classify(exc, endpoint, auth, MAILBOX)


def raised_while_handling(*chain: BaseException) -> BaseException:
    """chain[0] as if raised in the `except` block of chain[1], itself raised in that of chain[2]..."""
    for outer, inner in zip(chain, chain[1:]):
        outer.__context__ = inner
    return chain[0]


def response(status: int, body: bytes = b"", **headers: str) -> requests.Response:
    answer = requests.Response()
    answer.status_code, answer.reason, answer.raw = status, "Reason", io.BytesIO(body)
    answer.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return answer


@pytest.mark.parametrize("code", ["ErrorNonExistentMailbox", "ErrorSendAsDenied", "ErrorImpersonateUserDenied",
                                  "ErrorAccessDenied"])
def test_a_refused_sender_is_a_configuration_error_at_the_sender_step_naming_the_mailbox(code):
    failure = classify(getattr(errors, code)("no"))
    assert (failure.outcome, failure.step, failure.answered) == (Outcome.CONFIGURATION, SENDER, True)
    assert MAILBOX in failure.detail and code in failure.detail and "Send As" in failure.advice


@pytest.mark.parametrize("exc", [errors.ErrorQuotaExceeded("full"), errors.ErrorSubmissionQuotaExceeded("limit"),
                                 errors.ErrorInternalServerError("inner: SubmissionQuotaExceeded"),
                                 errors.TransportError("Unknown ResponseCode in ResponseMessage: "
                                                       "SubmissionQuotaExceeded")])
def test_quota_answers_pause_the_project(exc):
    assert classify(exc).outcome is Outcome.QUOTA


def test_invalid_recipients_fail_the_mail_with_the_servers_words():
    failure = classify(errors.ErrorInvalidRecipients("At least one recipient isn't valid."))
    assert failure.outcome is Outcome.PERMANENT and "At least one recipient isn't valid." in failure.detail


def test_a_busy_server_is_transient_with_its_back_off():
    failure = classify(errors.ErrorServerBusy("busy", back_off=2.5))
    assert failure.outcome is Outcome.TRANSIENT and failure.retry_after == 2.5


def test_a_refused_password_names_the_account_never_the_password():
    failure = classify(errors.UnauthorizedError("HTTP 401 Unauthorized"))
    assert isinstance(failure, ews.Unauthorized) and failure.outcome is Outcome.CONFIGURATION
    assert failure.step == AUTHENTICATION and "'EXAMPLE\\desk'" in failure.detail and "ntlm" in failure.detail
    assert "Canary" not in failure.detail + failure.advice + repr(PASSWORD)
    assert "auth_type" in failure.advice


def test_a_refused_password_at_exchange_online_points_to_exchange_oauth2():
    failure = classify(errors.UnauthorizedError("HTTP 401 Unauthorized"), ONLINE)
    assert "exchange_oauth2" in failure.detail and "exchange_oauth2" in failure.advice


def test_a_refused_token_names_the_application_never_the_token():
    failure = classify(errors.UnauthorizedError("HTTP 401 Unauthorized"), auth=TOKEN)
    assert "app-1" in failure.detail and "canary" not in failure.detail + repr(TOKEN)


def test_a_read_timeout_after_the_request_is_ambiguous():
    exc = raised_while_handling(errors.ErrorTimeoutExpired("Reraised"), requests.ReadTimeout("Read timed out."))
    assert classify(exc).outcome is Outcome.AMBIGUOUS


def test_a_connection_lost_waiting_for_the_answer_is_ambiguous_even_when_reraised_as_busy():
    lost = requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", AnswerLost("reset")))
    exc = raised_while_handling(errors.ErrorServerBusy("Reraised"), errors.ErrorTimeoutExpired("Reraised"), lost)
    failure = classify(exc)
    assert failure.outcome is Outcome.AMBIGUOUS and failure.step == SEND


def test_a_connection_that_never_opened_is_transient():
    never = requests.ConnectionError(urllib3.exceptions.NewConnectionError(None, "Connection refused"))
    failure = classify(raised_while_handling(errors.ErrorTimeoutExpired("Reraised"), never))
    assert failure.outcome is Outcome.TRANSIENT and failure.step == AUTHENTICATION


def test_the_outbound_policy_refusal_keeps_its_own_outcome():
    policy_says = TransportFailure(Outcome.CONFIGURATION, "host 'x' resolves only to addresses ...")
    exc = requests.ConnectionError(Refused(None, policy_says))
    assert (classify(exc).outcome, classify(exc).detail) == (Outcome.CONFIGURATION, policy_says.detail)


def test_an_untrusted_certificate_asks_for_ca_file():
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    exc = raised_while_handling(errors.TransportError("tls"), requests.exceptions.SSLError(verify))
    failure = classify(exc)
    assert failure.outcome is Outcome.CONFIGURATION and "ca_file" in failure.detail and "ca_file" in failure.advice


@pytest.mark.parametrize("status, outcome", [(503, Outcome.TRANSIENT), (429, Outcome.TRANSIENT),
                                             (404, Outcome.CONFIGURATION), (403, Outcome.CONFIGURATION),
                                             (302, Outcome.CONFIGURATION), (200, Outcome.CONFIGURATION),
                                             (400, Outcome.PERMANENT)])
def test_http_answers_that_are_not_soap(status, outcome):
    with pytest.raises(HttpAnswer) as answered:
        policy().raise_response_errors(response(status, b"<html/>", Retry_After="7", Location="https://x/"))
    failure = classify(answered.value)
    assert failure.outcome is outcome and str(status) in failure.detail
    assert failure.retry_after == (7.0 if outcome is Outcome.TRANSIENT else None)


def test_a_401_is_a_refused_login_even_when_the_server_closes_the_connection():
    with pytest.raises(errors.UnauthorizedError):
        policy().raise_response_errors(response(401, b"", Connection="close"))


def test_soap_answers_go_on_to_exchangelib():
    policy().raise_response_errors(response(500, b'<?xml version="1.0"?><s:Envelope/>'))
    policy().raise_response_errors(response(200, b'<?xml version="1.0"?><s:Envelope/>'))


def test_failures_without_advice_of_their_own_take_the_outcomes():
    assert ews.EwsFailure(Outcome.TRANSIENT, "x").advice.startswith("the server or network is failing")


def test_bcc_is_whoever_to_and_cc_do_not_name():
    data = (b'From: desk@example.org\r\nTo: "Doe, Jane" <Jane@Example.com>,\r\n b@example.com\r\n'
            b"Cc: =?utf-8?q?C=C3=A9?= <c@example.com>\r\nSubject: x\r\n\r\nbody\r\n")
    envelope = Envelope(uuid.uuid4(), MAILBOX, ("jane@example.com", "b@example.com", "c@example.com", "h@example.com"),
                        data, "<id@example.org>")
    assert envelope.blind_copies() == ["h@example.com"]


def test_token_credentials_always_carry_the_sources_token_and_never_fetch_one():
    current = {"token": "t1"}
    credentials = ews.TokenCredentials(lambda: current["token"], lambda: current.update(token="t3"))
    assert credentials.session_params()["token"]["access_token"] == "t1"
    assert credentials.sync() is False
    current["token"] = "t2"  # the source renewed it before expiry
    assert credentials.sync() is True and credentials.access_token["access_token"] == "t2"
    credentials.renew()  # the server refused t2
    assert credentials.access_token["access_token"] == "t3"


def test_an_answer_of_ews_is_not_mistaken_for_a_connection_failure_it_happened_to_follow():
    exc = raised_while_handling(errors.ErrorSendAsDenied("no"), ConnectionResetError("earlier"))
    assert classify(exc).step == SENDER
