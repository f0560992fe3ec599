"""Exchange OAuth2 (Microsoft 365) end to end: msal against a local Entra ID over HTTPS, mail handed to a
local Graph sendMail, or to an SMTP peer with XOAUTH2 (route smtp), or to an EWS peer (route ews); and the
Test action step by step."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import json
from datetime import datetime, timezone

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import event
from tests.peers.ews import EwsPeer
from tests.peers.microsoft import MicrosoftPeer, aad_error, graph_error, new_certificate
from tests.peers.smtp import SmtpPeer
from deskmail.workers.service_settings import typed
from deskmail.workers.delivery import envelope_for
from deskmail.workers.selftest import self_test
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import graph
from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.https import PolicySession
from deskmail.workers.transports.microsoft_tokens import MicrosoftTokens

SENDER = "desk@example.org"
SECRET = "Qx8~Canary-Secret_42"
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def exchange_settings(peer: MicrosoftPeer, ca_path, **block) -> dict:
    """Project settings for exchange_oauth2 with the peer as authority and Graph."""
    base = {"tenant_id": peer.tenant, "client_id": peer.client_id, "client_secret": SECRET, "sender": SENDER,
            "authority_url": peer.url, "graph_url": peer.url, "ca_file": str(ca_path), "timeout_seconds": 5}
    return {"mail_service": "exchange_oauth2", "from_address": SENDER,
            "exchange_oauth2": {key: value for key, value in {**base, **block}.items() if value is not None}}


def publish(runtime, worker, publisher, settings: dict, **fields):
    """Save the settings, start a worker and publish one event; returns (event id, the worker's broker)."""
    runtime.settings.save("alpha", settings)
    broker = worker()
    return publisher.publish(event(**fields)), broker


def mail_in(store, event_id, state: str):
    return wait_until(lambda: (m := store.get_mail(event_id)) and m.state == state and m)


@pytest.fixture
def microsoft(tls_ca):
    with MicrosoftPeer(tls_ca.issue(), client_secret=SECRET) as peer:
        yield peer


def test_graph_sends_our_message_from_the_sender_mailbox_with_bcc_recipients(runtime, store, worker, publisher,
                                                                              microsoft, tls_ca):
    event_id, _ = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path),
                          to=("to@example.com",), cc=["cc@example.com"], bcc=["hidden@example.com"],
                          subject="Via Graph")
    mail = mail_in(store, event_id, "sent")
    [sent] = microsoft.sent.wait_for(1, timeout=5)
    message = sent.message
    assert sent.mailbox == SENDER and message["From"] == SENDER and message["Subject"] == "Via Graph"
    assert (message["To"], message["Cc"], message["Bcc"]) == ("to@example.com", "cc@example.com",
                                                              "hidden@example.com")
    assert message["Message-ID"] == f"<{event_id}@example.org>" == mail.message_id
    assert "202" in mail.detail and "request-id" in mail.detail
    [request] = microsoft.tokens.snapshot()
    assert request.scope == microsoft.scope and request.method == "client_secret"


def test_a_certificate_credential_signs_the_client_assertion(runtime, store, worker, publisher, tls_ca):
    certificate = new_certificate()
    with MicrosoftPeer(tls_ca.issue(), certificate=certificate) as peer:
        settings = exchange_settings(peer, tls_ca.ca_path, client_secret=None, certificate=certificate.setting)
        event_id, _ = publish(runtime, worker, publisher, settings)
        mail_in(store, event_id, "sent")
        assert [r.method for r in peer.tokens.snapshot()] == ["client_assertion"]


def test_graph_throttling_is_retried_after_its_retry_after_then_sent(runtime, store, worker, publisher, microsoft,
                                                                     tls_ca, config):
    from deskmail.workers.app import enqueuer
    from deskmail.workers.scheduler import Scheduler
    microsoft.graph_replies.append(graph_error(429, "ApplicationThrottled", "Application is over its "
                                               "MailboxConcurrency limit.", **{"Retry-After": "1"}))
    event_id, broker = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path))
    mail = wait_until(lambda: (m := store.get_mail(event_id)) and m.attempts == 1 and m.state == "queued" and m)
    assert "429 ApplicationThrottled" in mail.detail
    assert (mail.next_attempt_at - mail.updated_at).total_seconds() >= 0.9  # Retry-After, not the 0.2 s backoff
    scheduler = Scheduler(store, enqueuer(broker), config)
    wait_until(lambda: scheduler.tick()["due"] or store.get_mail(event_id).state == "sent")
    assert mail_in(store, event_id, "sent").attempts == 2 and len(microsoft.sent.wait_for(1, timeout=5)) == 1


def test_a_mailbox_over_its_sending_limit_pauses_the_project(runtime, store, worker, publisher, microsoft, tls_ca):
    microsoft.graph_replies.append(graph_error(429, "ErrorExceededMessageLimit", "Cannot send the message: "
                                               "SubmissionQuotaExceeded.", **{"Retry-After": "3600"}))
    event_id, _ = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path))
    mail = mail_in(store, event_id, "backlog")
    assert mail.reason == "provider_quota" and "ErrorExceededMessageLimit" in mail.detail
    assert store.get_project("alpha").paused_reason == "provider_quota"


def test_a_token_graph_refuses_is_renewed_once(runtime, store, worker, publisher, microsoft, tls_ca):
    microsoft.graph_replies.append(graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed."))
    event_id, _ = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path))
    assert mail_in(store, event_id, "sent").attempts == 1
    assert len(microsoft.tokens.snapshot()) == 2 and microsoft.graph_requests == 2


def test_a_wrong_client_secret_fails_as_configuration_naming_aadsts7000215(runtime, store, worker, publisher,
                                                                          tls_ca):
    with MicrosoftPeer(tls_ca.issue(), client_secret="the-right-one") as peer:
        event_id, _ = publish(runtime, worker, publisher, exchange_settings(peer, tls_ca.ca_path))
        mail = mail_in(store, event_id, "failed")
    assert mail.reason == "configuration" and "AADSTS7000215" in mail.detail
    assert "client secret is wrong" in mail.detail and "new client secret" in mail.detail
    assert SECRET not in mail.detail and peer.sent.snapshot() == []


def test_a_failing_token_endpoint_is_retried(runtime, store, worker, publisher, microsoft, tls_ca, config):
    from deskmail.workers.app import enqueuer
    from deskmail.workers.scheduler import Scheduler
    microsoft.token_replies.append((503, {}, {"error": "temporarily_unavailable"}))
    event_id, broker = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path))
    mail = wait_until(lambda: (m := store.get_mail(event_id)) and m.attempts == 1 and m.state == "queued" and m)
    assert "Microsoft login" in mail.detail and "503" in mail.detail
    scheduler = Scheduler(store, enqueuer(broker), config)
    wait_until(lambda: scheduler.tick()["due"] or store.get_mail(event_id).state == "sent")
    mail_in(store, event_id, "sent")


@pytest.fixture
def outlook_smtp(tls_ca, microsoft):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={microsoft.token_for(OUTLOOK_SCOPE)}) \
            as peer:
        yield peer


def smtp_route(microsoft: MicrosoftPeer, smtp: SmtpPeer, ca_path) -> dict:
    return exchange_settings(microsoft, ca_path, route="smtp", smtp_host=smtp.host, smtp_port=smtp.port)


def test_the_smtp_route_logs_in_with_xoauth2_for_exchange_online(runtime, store, worker, publisher, microsoft,
                                                                 outlook_smtp, tls_ca):
    event_id, _ = publish(runtime, worker, publisher, smtp_route(microsoft, outlook_smtp, tls_ca.ca_path),
                          bcc=["hidden@example.com"])
    mail_in(store, event_id, "sent")
    [received] = outlook_smtp.wait_for(1)
    assert received.auth_user == SENDER and received.rcpt_tos == ("user@example.com", "hidden@example.com")
    assert received.message["Message-ID"] == f"<{event_id}@example.org>"
    assert [r.scope for r in microsoft.tokens.snapshot()] == [OUTLOOK_SCOPE]


@pytest.fixture
def exchange_ews(tls_ca, microsoft):
    """An EWS endpoint taking the tokens the authority gives for its own origin (as for outlook.office365.com)."""
    with EwsPeer(tls_ca.issue()) as peer:
        peer.tokens.add(microsoft.token_for(f"https://{peer.host}:{peer.port}/.default"))
        yield peer


def ews_route(microsoft: MicrosoftPeer, peer: EwsPeer, ca_path) -> dict:
    return exchange_settings(microsoft, ca_path, route="ews", ews_url=peer.url)


def test_the_ews_route_impersonates_the_sender_with_an_exchange_token(runtime, store, worker, publisher, microsoft,
                                                                      exchange_ews, tls_ca):
    event_id, _ = publish(runtime, worker, publisher, ews_route(microsoft, exchange_ews, tls_ca.ca_path),
                          bcc=["hidden@example.com"])
    mail_in(store, event_id, "sent")
    [item] = exchange_ews.received.wait_for(1, timeout=5)
    assert item.impersonated == SENDER and item.user.startswith("bearer:") and item.bcc == ("hidden@example.com",)
    assert item.message["Message-ID"] == f"<{event_id}@example.org>"
    assert [r.scope for r in microsoft.tokens.snapshot()] == [f"https://127.0.0.1:{exchange_ews.port}/.default"]


# --- the Test action ---------------------------------------------------------------------------------

HTTPS = ["name resolution", "TCP connect", "TLS"]
SMTP_STEPS = ["name resolution", "TCP connect", "capabilities", "TLS", "capabilities", "authentication",
              "sender", "send"]


def failed_step(checkup):
    """The failed (last) step; every earlier one passed."""
    assert not checkup.accepted
    *passed, last = checkup.steps
    assert last.status == "failed" and all(step.status == "passed" for step in passed)
    return last


def test_the_test_action_over_graph_names_every_step(runtime, microsoft, tls_ca):
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha", to="admin@example.com")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == [*HTTPS, "token", *HTTPS, "authentication", "sender", "send"]
    assert microsoft.sent.wait_for(1, timeout=5)[0].message["To"] == "admin@example.com"


def test_the_test_action_over_smtp_gets_a_token_then_runs_the_smtp_steps(runtime, microsoft, outlook_smtp, tls_ca):
    runtime.settings.save("alpha", smtp_route(microsoft, outlook_smtp, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == [*HTTPS, "token", *SMTP_STEPS]
    assert outlook_smtp.wait_for(1)[0].auth_user == SENDER


def test_the_test_action_over_ews_gets_a_token_then_runs_the_ews_steps(runtime, microsoft, exchange_ews, tls_ca):
    runtime.settings.save("alpha", ews_route(microsoft, exchange_ews, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == [*HTTPS, "token", *HTTPS, "authentication", "sender", "send"]
    assert exchange_ews.received.wait_for(1, timeout=5)[0].impersonated == SENDER


def test_the_test_action_names_a_wrong_client_secret_at_token(runtime, tls_ca):
    with MicrosoftPeer(tls_ca.issue(), client_secret="the-right-one") as peer:
        runtime.settings.save("alpha", exchange_settings(peer, tls_ca.ca_path))
        step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "token" and "AADSTS7000215" in step.detail and "client secret is wrong" in step.detail
    assert "create a new client secret" in step.advice and "deskmail settings set" in step.advice
    assert SECRET not in json.dumps([step.detail, step.advice])


def test_the_test_action_names_an_unknown_tenant_at_token(runtime, microsoft, tls_ca):
    settings = exchange_settings(microsoft, tls_ca.ca_path, tenant_id="fabrikam.onmicrosoft.com")
    runtime.settings.save("alpha", settings)
    step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "token" and "fabrikam.onmicrosoft.com" in step.detail and "AADSTS90002" in step.detail
    assert "tenant_id" in step.advice


def test_the_test_action_names_a_self_signed_authority_certificate_at_tls(runtime, tls_ca):
    with MicrosoftPeer(tls_ca.self_signed(), client_secret=SECRET) as peer:
        runtime.settings.save("alpha", exchange_settings(peer, tls_ca.ca_path))
        checkup = self_test(runtime, "alpha")
    step = failed_step(checkup)
    assert [s.name for s in checkup.steps] == HTTPS
    assert "self-signed" in step.detail and "ca_file" in step.advice


@pytest.mark.parametrize("reply, words, advice", [
    (graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."),
     "ErrorAccessDenied", "Mail.Send"),
    (graph_error(404, "ErrorInvalidUser", f"The requested user '{SENDER}' is invalid."),
     "ErrorInvalidUser", "mailbox"),
])
def test_the_test_action_names_a_refused_sender_at_sender(runtime, microsoft, tls_ca, reply, words, advice):
    microsoft.graph_replies.append(reply)
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "sender" and words in step.detail and SENDER in step.detail
    assert advice in step.advice and SENDER in step.advice


def test_every_test_action_asks_for_a_fresh_token(runtime, microsoft, tls_ca):
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    assert self_test(runtime, "alpha").accepted and self_test(runtime, "alpha").accepted
    assert len(microsoft.tokens.snapshot()) == 2  # a fresh token each time, none from the sending cache


def test_an_aadsts_refusal_the_peer_scripts_is_translated(runtime, microsoft, tls_ca):
    microsoft.token_replies.append(aad_error(400, "invalid_client", "AADSTS7000222", "The provided client secret "
                                             "keys for app '…' are expired."))
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "token" and "expired" in step.detail and "new client secret" in step.advice


# --- Graph's parts, without the pipeline ------------------------------------------------------------

def envelope_of(settings: dict, **fields):
    project = ProjectSettings("alpha", 1, settings["mail_service"], settings)
    return envelope_for(event(**fields), project, datetime.now(timezone.utc))


def test_bcc_names_only_the_recipients_that_to_and_cc_do_not_show(microsoft, tls_ca):
    settings = exchange_settings(microsoft, tls_ca.ca_path)
    envelope = envelope_of(settings, to=[{"address": "to@example.com", "name": "Zoë, Müller"}, "two@example.com"],
                           cc=["CC@example.com"], bcc=["cc@example.com", "hidden@example.com"])
    message = email.message_from_bytes(graph.with_bcc(envelope), policy=email.policy.default)
    assert message["Bcc"] == "hidden@example.com" and message["Message-ID"] == envelope.message_id
    plain = envelope_of(settings, to=["to@example.com"])
    assert graph.with_bcc(plain) == plain.data


def test_a_graph_answer_lost_after_the_message_went_out_is_ambiguous(microsoft, tls_ca):
    settings = exchange_settings(microsoft, tls_ca.ca_path)
    block, tokens = typed("exchange_oauth2", settings["exchange_oauth2"]), MicrosoftTokens(LOOPBACK)
    mailbox = graph.Mailbox(microsoft.url, SENDER, str(tls_ca.ca_path), timeout=5, final_reply_timeout=0.2)
    microsoft.graph_delay = 0.5
    with PolicySession(LOOPBACK, ca_file=str(tls_ca.ca_path)) as session, pytest.raises(TransportFailure) as caught:
        graph.send(session, mailbox, envelope_of(settings), lambda: tokens.token(("alpha", 1), block,
                                                                                  microsoft.scope), lambda: None)
    assert caught.value.outcome is Outcome.AMBIGUOUS and "may or may not" in caught.value.detail
    assert len(microsoft.sent.wait_for(1, timeout=5)) == 1  # Graph did take it


def test_the_project_ca_file_decides_trust_for_tokens_and_graph_whatever_the_environment_says(microsoft, tls_ca,
                                                                                             monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(tls_ca.self_signed().cert_path))
    settings = exchange_settings(microsoft, tls_ca.ca_path)
    block, tokens, client = settings["exchange_oauth2"], MicrosoftTokens(LOOPBACK), graph.GraphClient(LOOPBACK)
    block, unverified_block = typed("exchange_oauth2", block), typed("exchange_oauth2", {**block, "ca_file": None})
    mailbox = graph.Mailbox(microsoft.url, SENDER, str(tls_ca.ca_path), timeout=5, final_reply_timeout=5)
    token = lambda: tokens.token(("alpha", 1), block, microsoft.scope)  # noqa: E731
    try:
        assert "202" in client.send(mailbox, envelope_of(settings), token, lambda: None).detail
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.setenv(name, str(tls_ca.ca_path))  # the environment's CA never stands in for ca_file
        with pytest.raises(TransportFailure) as refused_token:
            tokens.token(("beta", 1), unverified_block, microsoft.scope)
        unverified = graph.Mailbox(microsoft.url, SENDER, None, timeout=5, final_reply_timeout=5)
        with pytest.raises(TransportFailure) as refused_send:
            client.send(unverified, envelope_of(settings), token, lambda: None)
    finally:
        client.close()
    assert refused_token.value.outcome is refused_send.value.outcome is Outcome.CONFIGURATION
    assert "does not trust" in refused_token.value.detail and "does not trust" in refused_send.value.detail
    assert len(microsoft.sent.snapshot()) == 1


def test_an_authority_echoing_the_client_secret_url_encoded_or_in_base64_leaks_it_nowhere(
        runtime, store, worker, publisher, microsoft, tls_ca, caplog):
    import base64
    import logging
    import urllib.parse
    caplog.set_level(logging.DEBUG)
    forms = [urllib.parse.quote_plus(SECRET), "".join(f"%{b:02X}" for b in SECRET.encode()),
             base64.b64encode(f"{microsoft.client_id}:{SECRET}".encode()).decode()]
    echo = aad_error(400, "invalid_request", "AADSTS900144", "The request body must contain the following parameter: "
                     f"'grant_type'. Received: client_secret={forms[0]}&x={forms[1]} (Basic {forms[2]})")
    microsoft.token_replies.extend([echo, echo])
    event_id, _ = publish(runtime, worker, publisher, exchange_settings(microsoft, tls_ca.ca_path))
    mail = mail_in(store, event_id, "failed")
    checkup = self_test(runtime, "alpha")
    shown = [mail.detail, store.get_project("alpha").config_error, caplog.text,
             *(f"{step.detail} {step.advice}" for step in checkup.steps)]
    assert "AADSTS900144" in mail.detail
    for form in [SECRET, *forms]:
        assert all(form not in text for text in shown), form
