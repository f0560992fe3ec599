"""Gmail OAuth2 end to end: google-auth against a local token endpoint, XOAUTH2 over STARTTLS."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import SENDER, event, gmail_settings
from tests.peers.google_token import GoogleTokenPeer, service_account_key
from tests.peers.smtp import SmtpPeer

@pytest.fixture
def smtp(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"ya29.test-token"}) as peer:
        yield peer


def test_service_account_mail_is_delivered_with_a_signed_jwt_for_the_sender(runtime, store, worker, publisher,
                                                                            smtp, tls_ca):
    key, public = service_account_key()
    with GoogleTokenPeer(tls_ca.issue(), public_key=public) as token:
        runtime.settings.save("alpha", gmail_settings(smtp, token, tls_ca.ca_path, service_account_key=key))
        worker()
        event_id = publisher.publish(event(subject="Via Gmail"))
        wait_until(lambda: (m := store.get_mail(event_id)) and m.state == "sent")
        [claims] = token.requests.wait_for(1, timeout=5)
    assert claims["sub"] == SENDER and claims["scope"] == "https://mail.google.com/"
    [received] = smtp.wait_for(1)
    assert received.auth_user == SENDER and received.message["Subject"] == "Via Gmail"
    assert received.message["Message-ID"] == f"<{event_id}@example.org>"


def send_with_refresh_token(runtime, store, worker, publisher, smtp, tls_ca, refresh_token: str, state: str):
    """Publish one mail for a project using an OAuth client + refresh token; return it once in `state`."""
    with GoogleTokenPeer(tls_ca.issue(), refresh_tokens={"1//good": ("cid", "csecret")}) as token:
        runtime.settings.save("alpha", gmail_settings(smtp, token, tls_ca.ca_path, client_id="cid",
                                                      client_secret="csecret", refresh_token=refresh_token))
        worker()
        event_id = publisher.publish(event())
        wait_until(lambda: (m := store.get_mail(event_id)) and m.state == state)
    return store.get_mail(event_id)


def test_an_expired_refresh_token_fails_as_a_configuration_error_named_by_google(runtime, store, worker,
                                                                                publisher, smtp, tls_ca):
    mail = send_with_refresh_token(runtime, store, worker, publisher, smtp, tls_ca, "1//revoked", "failed")
    assert mail.reason == "configuration" and "invalid_grant" in mail.detail and "1//revoked" not in mail.detail


def test_a_good_refresh_token_delivers(runtime, store, worker, publisher, smtp, tls_ca):
    send_with_refresh_token(runtime, store, worker, publisher, smtp, tls_ca, "1//good", "sent")
    assert smtp.wait_for(1)[0].auth_user == SENDER


def test_a_token_endpoint_echoing_the_client_secret_and_refresh_token_leaks_them_nowhere(
        runtime, store, worker, publisher, smtp, tls_ca, caplog):
    import logging
    import urllib.parse
    from deskmail.workers.selftest import self_test
    caplog.set_level(logging.DEBUG)
    secret, refresh = "Canary/Client+Secret=42", "1//Canary-Refresh-Token_99"
    with GoogleTokenPeer(tls_ca.issue(), echo=True) as token:
        runtime.settings.save("alpha", gmail_settings(smtp, token, tls_ca.ca_path, client_id="cid",
                                                      client_secret=secret, refresh_token=refresh))
        worker()
        event_id = publisher.publish(event())
        wait_until(lambda: (m := store.get_mail(event_id)) and m.state == "failed")
        checkup = self_test(runtime, "alpha")
    mail = store.get_mail(event_id)
    shown = [mail.detail, store.get_project("alpha").config_error, caplog.text,
             *(f"{step.detail} {step.advice}" for step in checkup.steps)]
    assert "invalid_request" in mail.detail and checkup.steps[-1].name == "token"
    for canary in (secret, refresh):
        for form in (canary, urllib.parse.quote_plus(canary), urllib.parse.quote(canary, safe="")):
            assert all(form not in text for text in shown), form
