"""SMTP against what servers really do: no SMTPUTF8, authentication answers at RCPT, a reset or a clean close
after the final ".", an AUTH exchange echoed back; and sessions that never carry a half-finished exchange."""

from __future__ import annotations

import base64
import logging
import uuid

import pytest

from tests.integration.helpers import event, smtp_settings
from tests.integration.test_pipeline import wait_state
from tests.peers.raw_smtp import RawSmtpPeer
from tests.peers.smtp import SmtpPeer
from deskmail.workers.selftest import self_test
from deskmail.workers.transports.base import Envelope, Outcome, TransportFailure
from deskmail.workers.transports.smtp import SmtpSender
from deskmail.workers.transports.smtp_session import Endpoint

CANARY = "Canary-7f3e9b1d-Secret"
LOOPBACK = ("127.0.0.0/8",)


def plain_settings(peer, **extra) -> dict:
    """Settings for a peer without TLS or AUTH."""
    return smtp_settings(peer, security="none", auth="none", **extra)


def envelope(*recipients: str, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> Envelope:
    return Envelope(uuid.uuid4(), "desk@example.org", recipients, data, "<x@example.org>")


def loopback_sender() -> SmtpSender:
    import ipaddress
    return SmtpSender([ipaddress.ip_network(net) for net in LOOPBACK], final_reply_timeout=5)


# --- IDN and Unicode addresses -------------------------------------------------------------

def test_without_smtputf8_a_unicode_domain_goes_as_punycode_in_rcpt_and_headers(runtime, store, worker, publisher):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", plain_settings(peer))
        worker()
        ev = event(to=[{"address": "anna@bücher.ch", "name": "Anna"}, "bob@XN--BCHER-KVA.ch"])
        mail = wait_state(store, publisher.publish(ev), "sent", "failed")
        assert mail.state == "sent", mail.detail
        [received] = peer.wait_for(1)
    assert sorted(received.rcpt_tos) == ["anna@xn--bcher-kva.ch", "bob@xn--bcher-kva.ch"]
    assert [a.addr_spec for a in received.message["To"].addresses] == ["anna@xn--bcher-kva.ch",
                                                                         "bob@xn--bcher-kva.ch"]
    assert [r["address"] for r in mail.event["to"]] == ["anna@bücher.ch", "bob@xn--bcher-kva.ch"]


def test_without_smtputf8_a_unicode_local_part_fails_that_mail_alone_and_the_next_one_goes(
        runtime, store, worker, publisher):
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", plain_settings(peer))
        worker(threads=1)  # one thread: one cached session, which the next mail reuses
        warm = wait_state(store, publisher.publish(event()), "sent", "failed")
        bad = wait_state(store, publisher.publish(event(to=["jürgen@example.com"])), "sent", "failed")
        good = wait_state(store, publisher.publish(event()), "sent", "failed")
        assert len(peer.wait_for(2)) == 2
    assert warm.state == "sent" and good.state == "sent", good.detail
    assert bad.state == "failed" and bad.reason == "permanent"
    assert "jürgen@example.com" in bad.detail and "SMTPUTF8" in bad.detail
    assert store.get_project("alpha").config_error is None


def test_with_smtputf8_a_unicode_address_goes_as_given(runtime, store, worker, publisher):
    with SmtpPeer(smtputf8=True) as peer:
        runtime.settings.save("alpha", plain_settings(peer))
        worker()
        mail = wait_state(store, publisher.publish(event(to=["jürgen@bücher.ch", "anna@bücher.ch"])), "sent",
                          "failed")
        assert mail.state == "sent", mail.detail
        [received] = peer.wait_for(1)
    assert received.rcpt_tos == ("jürgen@bücher.ch", "anna@bücher.ch")


class _PassesForAscii(str):
    """An address every check takes for ASCII, which smtplib then fails to encode: an exchange broken half-way."""

    def isascii(self) -> bool:
        return True


def test_a_session_that_failed_half_way_is_never_reused():
    sender = loopback_sender()
    with SmtpPeer() as peer:
        endpoint = Endpoint(peer.host, peer.port, "none", timeout=5)
        with pytest.raises(UnicodeEncodeError):  # after MAIL FROM and one RCPT went out
            sender.send(("p", 1), endpoint, None, envelope("a@example.com", _PassesForAscii("ü@example.com")))
        delivered = sender.send(("p", 1), endpoint, None, envelope("a@example.com"))
        assert delivered.detail.startswith("250")
        assert len(peer.wait_for(1)) == 1


# --- classification ---------------------------------------------------------------------

@pytest.mark.parametrize("reply", ["535 5.7.8 Authentication credentials invalid",
                                   "550 5.7.30 Basic authentication is not supported for Client Submission"])
def test_an_authentication_answer_at_rcpt_fails_the_mail_as_configuration(runtime, store, worker, publisher, reply):
    with SmtpPeer(rcpt_replies={"a@example.com": reply}) as peer:
        runtime.settings.save("alpha", plain_settings(peer))
        worker()
        mail = wait_state(store, publisher.publish(event(to=["a@example.com", "b@example.com"])), "sent", "failed")
        assert peer.messages == []
    assert mail.state == "failed" and mail.reason == "configuration", mail.detail
    assert reply.split()[1] in store.get_project("alpha").config_error


def test_a_reset_while_waiting_for_the_final_reply_is_retried_not_ambiguous():
    with RawSmtpPeer("reset") as peer:
        with pytest.raises(TransportFailure) as caught:
            loopback_sender().send(("p", 1), Endpoint(peer.host, peer.port, "none", timeout=5), None,
                                   envelope("a@example.com", data=b"Subject: x\r\n\r\n" + b"y" * 2000 + b"\r\n"))
    assert caught.value.outcome is Outcome.TRANSIENT, caught.value.detail
    assert "after the end of DATA" in caught.value.detail and "did not take the mail" in caught.value.detail


def test_a_clean_close_after_the_final_dot_stays_ambiguous():
    with RawSmtpPeer("close") as peer:
        with pytest.raises(TransportFailure) as caught:
            loopback_sender().send(("p", 1), Endpoint(peer.host, peer.port, "none", timeout=5), None,
                                   envelope("a@example.com"))
    assert caught.value.outcome is Outcome.AMBIGUOUS, caught.value.detail


# --- secrets echoed by the server ----------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_a_server_echoing_the_auth_exchange_leaks_the_password_nowhere(runtime, store, worker, publisher, tls_ca,
                                                                       caplog, mechanism):
    caplog.set_level(logging.DEBUG)
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": CANARY}, echo_auth=True) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, password=CANARY, auth=mechanism))
        worker()
        mail = wait_state(store, publisher.publish(event()), "failed")
        checkup = self_test(runtime, "alpha")
    encodings = [CANARY, base64.b64encode(CANARY.encode()).decode(),
                 base64.b64encode(f"\0desk\0{CANARY}".encode()).decode()]
    shown = [mail.detail, store.get_project("alpha").config_error, caplog.text,
             *(f"{step.detail} {step.advice}" for step in checkup.steps)]
    assert "535" in mail.detail and "535" in checkup.steps[-1].detail
    for text in shown:
        for secret in encodings:
            assert secret not in text
