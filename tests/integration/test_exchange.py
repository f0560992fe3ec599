"""On-premises Exchange over EWS end to end: a local HTTPS EWS endpoint with real NTLM and Basic logins,
mail through RabbitMQ and PostgreSQL, and the Test action step by step."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime, timezone

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import event
from tests.peers.ews import Answer, EwsPeer, ews_error, http_status, server_busy
from deskmail.workers.delivery import envelope_for
from deskmail.workers.selftest import self_test
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import ews
from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.ews_http import Endpoint

SENDER = "desk@example.org"
USER, UPN = "EXAMPLE\\desk", "desk@example.org"
PASSWORD = "Pa55-Canary-Ews!"
REFUSED = "other@example.org"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
STEPS = ["name resolution", "TCP connect", "TLS", "authentication", "sender", "send"]


def exchange_settings(peer: EwsPeer, ca_path, *, from_address: str = SENDER, **block) -> dict:
    """Project settings for the exchange service pointing at the peer."""
    base = {"ews_url": peer.url, "username": USER, "password": PASSWORD, "auth_type": "ntlm",
            "ca_file": str(ca_path), "timeout_seconds": 5}
    return {"mail_service": "exchange", "from_address": from_address,
            "exchange": {key: value for key, value in {**base, **block}.items() if value is not None}}


@pytest.fixture
def exchange(tls_ca):
    with EwsPeer(tls_ca.issue(), users={USER: PASSWORD, UPN: PASSWORD},
                 refused_senders={REFUSED: "ErrorSendAsDenied"}) as peer:
        yield peer


def publish(runtime, worker, publisher, settings: dict, **fields) -> str:
    """Save the settings, start a worker and publish one event; returns its id."""
    runtime.settings.save("alpha", settings)
    worker()
    return publisher.publish(event(**fields))


def mail_in(store, event_id: str, state: str):
    return wait_until(lambda: (m := store.get_mail(event_id)) and m.state == state and m)


@pytest.mark.parametrize("username, auth_type", [(USER, "ntlm"), (UPN, "basic")])
def test_one_create_item_sends_our_message_from_the_sender_to_to_cc_and_bcc(runtime, store, worker, publisher,
                                                                             exchange, tls_ca, username, auth_type):
    settings = exchange_settings(exchange, tls_ca.ca_path, username=username, auth_type=auth_type)
    event_id = publish(runtime, worker, publisher, settings, subject="Ticket #7 closed", to=["to@example.com"],
                       cc=["cc@example.com"], bcc=["hidden@example.com"])
    mail = mail_in(store, event_id, "sent")
    [item] = exchange.received.wait_for(1, timeout=5)
    assert item.user == username and item.disposition == "SendOnly" and item.sender == SENDER
    assert item.message["Subject"] == "Ticket #7 closed" and item.message["Bcc"] is None
    assert item.message["Message-ID"] == mail.message_id == f"<{event_id}@example.org>"
    assert item.bcc == ("hidden@example.com",)
    assert sorted(item.recipients) == ["cc@example.com", "hidden@example.com", "to@example.com"]
    assert exchange.operations.snapshot() == ["CreateItem 200 NoError"]
    assert "NoError" in mail.detail


def test_a_wrong_password_fails_as_configuration_without_showing_it(runtime, store, worker, publisher, exchange,
                                                                    tls_ca):
    settings = exchange_settings(exchange, tls_ca.ca_path, password="Wrong-Canary-Pass")
    mail = mail_in(store, publish(runtime, worker, publisher, settings), "failed")
    assert mail.reason == "configuration" and f"'{USER}'" in mail.detail and "401" in mail.detail
    assert "Canary" not in mail.detail and exchange.received.snapshot() == []


def test_a_busy_server_is_retried_after_its_back_off_then_the_mail_is_sent(runtime, store, worker, publisher,
                                                                          exchange, tls_ca, config):
    from deskmail.workers.app import enqueuer
    from deskmail.workers.scheduler import Scheduler
    exchange.script(server_busy(back_off_ms=1000), http_status(503, Retry_After="0"))
    runtime.settings.save("alpha", exchange_settings(exchange, tls_ca.ca_path))
    broker = worker()
    event_id = publisher.publish(event())
    mail = wait_until(lambda: (m := store.get_mail(event_id)) and m.attempts == 1 and m.state == "queued" and m)
    assert "ErrorServerBusy" in mail.detail
    assert (mail.next_attempt_at - mail.updated_at).total_seconds() >= 0.9  # BackOffMilliseconds, not 0.2 s
    scheduler = Scheduler(store, enqueuer(broker), config)
    wait_until(lambda: scheduler.tick() and store.get_mail(event_id).state == "sent")
    assert store.get_mail(event_id).attempts == 3 and len(exchange.received.snapshot()) == 1
    assert exchange.operations.snapshot() == ["CreateItem 500 ErrorServerBusy", "CreateItem 503",
                                              "CreateItem 200 NoError"]


def test_a_refused_sender_fails_as_configuration_naming_it(runtime, store, worker, publisher, exchange, tls_ca):
    settings = exchange_settings(exchange, tls_ca.ca_path, from_address=REFUSED)
    mail = mail_in(store, publish(runtime, worker, publisher, settings), "failed")
    assert mail.reason == "configuration" and REFUSED in mail.detail and "ErrorSendAsDenied" in mail.detail


def test_an_exhausted_sending_quota_pauses_the_project(runtime, store, worker, publisher, exchange, tls_ca):
    exchange.script(ews_error("ErrorSubmissionQuotaExceeded"))
    mail = mail_in(store, publish(runtime, worker, publisher, exchange_settings(exchange, tls_ca.ca_path)), "backlog")
    assert mail.reason == "provider_quota" and store.get_project("alpha").paused_reason == "provider_quota"


def test_a_connection_lost_after_the_message_was_sent_is_ambiguous(runtime, store, worker, publisher, exchange,
                                                                   tls_ca):
    exchange.script(Answer(drop=True))
    mail = mail_in(store, publish(runtime, worker, publisher, exchange_settings(exchange, tls_ca.ca_path)),
                   "ambiguous")
    assert "may or may not" in mail.detail and mail.message_id
    assert exchange.operations.snapshot() == ["CreateItem dropped"] and mail.attempts == 1


# --- the Test action ---------------------------------------------------------------------------------

def failed_step(checkup):
    """The failed (last) step; every earlier one passed."""
    assert not checkup.accepted
    *passed, last = checkup.steps
    assert last.status == "failed" and all(step.status == "passed" for step in passed), checkup.steps
    return last


def test_the_test_action_passes_every_step_and_leaves_no_connection_open(runtime, exchange, tls_ca):
    runtime.settings.save("alpha", exchange_settings(exchange, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha", to="admin@example.com")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == STEPS
    assert "NoError" in checkup.steps[-1].detail and f"'{USER}'" in checkup.steps[3].detail
    assert exchange.received.snapshot()[0].message["To"] == "admin@example.com"
    wait_until(lambda: exchange.open_connections == 0, timeout=5)


def test_the_test_action_fails_at_authentication_for_a_wrong_password(runtime, exchange, tls_ca):
    runtime.settings.save("alpha", exchange_settings(exchange, tls_ca.ca_path, password="Wrong-Canary-Pass"))
    step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "authentication" and "401" in step.detail
    assert "password" in step.advice and "auth_type" in step.advice
    assert "Canary" not in step.detail + step.advice


def test_the_test_action_fails_at_tls_for_a_self_signed_certificate(runtime, tls_ca):
    with EwsPeer(tls_ca.self_signed(), users={USER: PASSWORD}) as peer:
        runtime.settings.save("alpha", exchange_settings(peer, tls_ca.ca_path))
        step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "TLS" and "self-signed" in step.detail and "ca_file" in step.advice


def test_the_test_action_fails_at_sender_for_a_refused_sender(runtime, exchange, tls_ca):
    runtime.settings.save("alpha", exchange_settings(exchange, tls_ca.ca_path, from_address=REFUSED))
    checkup = self_test(runtime, "alpha")
    step = failed_step(checkup)
    assert [s.name for s in checkup.steps] == STEPS[:-1]
    assert step.name == "sender" and "ErrorSendAsDenied" in step.detail and "Send As" in step.advice


# --- the shared EWS sender, without the broker ----------------------------------------------------------

def envelope(to: str = "to@example.com"):
    settings = ProjectSettings("alpha", 1, "exchange", {"from_address": SENDER})
    return envelope_for(event(to=[to]), settings, datetime.now(timezone.utc))


def endpoint(peer: EwsPeer, ca_path, **changes) -> Endpoint:
    return Endpoint(**{"url": peer.url, "ca_file": str(ca_path), "timeout": 5, "final_reply_timeout": 5, **changes})


def send(peer: EwsPeer, ca_path, auth=ews.Password(USER, PASSWORD), allow=LOOPBACK, **changes):
    sender = ews.EwsSender(allow)
    try:
        return sender.send(("alpha", 1), endpoint(peer, ca_path, **changes), auth, SENDER, envelope())
    finally:
        sender.close()


def test_no_answer_within_the_final_reply_timeout_is_ambiguous(exchange, tls_ca):
    exchange.script(Answer(stall=1.0))
    with pytest.raises(TransportFailure) as failed:
        send(exchange, tls_ca.ca_path, final_reply_timeout=0.3)
    assert failed.value.outcome is Outcome.AMBIGUOUS and "timed out" in failed.value.detail


def test_a_host_the_outbound_policy_forbids_is_not_contacted(exchange, tls_ca):
    with pytest.raises(TransportFailure) as failed:
        send(exchange, tls_ca.ca_path, allow=())
    assert failed.value.outcome is Outcome.CONFIGURATION and "loopback" in failed.value.detail
    assert exchange.logins.snapshot() == []


def test_the_project_ca_file_decides_trust_whatever_the_environment_says(exchange, tls_ca, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_ca.self_signed().cert_path))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tls_ca.self_signed().cert_path))
    assert "NoError" in send(exchange, tls_ca.ca_path).detail
    with pytest.raises(TransportFailure) as failed:
        send(exchange, tls_ca.ca_path, ca_file=None)  # the system store does not know the test CA
    assert failed.value.outcome is Outcome.CONFIGURATION and "ca_file" in failed.value.detail


def test_a_refused_token_is_dropped_and_the_mail_sent_with_a_new_one_impersonating_the_sender(tls_ca):
    issued = iter(["stale-token", "fresh-token"])
    current = {"token": next(issued)}
    auth = ews.Token("app-1", lambda: current["token"], lambda: current.update(token=next(issued)))
    with EwsPeer(tls_ca.issue(), tokens={"fresh-token"}) as peer:
        send(peer, tls_ca.ca_path, auth=auth)
        [item] = peer.received.wait_for(1, timeout=5)
    assert item.user == "bearer:fresh-token" and item.impersonated == SENDER
    assert [login[1:] for login in peer.logins.snapshot()] == [("stale-token", False), ("fresh-token", True)]


def test_a_cached_account_reuses_its_connection(exchange, tls_ca):
    sender = ews.EwsSender(LOOPBACK)
    try:
        for _ in range(3):
            sender.send(("alpha", 1), endpoint(exchange, tls_ca.ca_path), ews.Password(USER, PASSWORD), SENDER,
                        envelope(f"{uuid.uuid4().hex[:8]}@example.com"))
        assert [login[0] for login in exchange.logins.snapshot()] == ["ntlm"]  # NTLM binds the one connection
    finally:
        sender.close()
    wait_until(lambda: exchange.open_connections == 0, timeout=5)
