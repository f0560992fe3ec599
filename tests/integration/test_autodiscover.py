"""Exchange Autodiscover: the EWS URL asked of the sender's domain with the account's password, over HTTPS to a
local Autodiscover service (SOAP GetUserSettings, real NTLM), through RabbitMQ and in the Test action.

The mail domains' names lead to the peer through tests.peers.names (the tests' DNS, with port 443 forwarded)."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import event
from tests.integration.test_exchange import PASSWORD, UPN, USER, exchange_settings, failed_step, mail_in
from tests.peers.ews import Discovery, EwsPeer, http_status
from tests.peers.names import served_names
from deskmail.workers.selftest import self_test

DOMAIN, HOSTED = "corp.example.org", "hosted.example.net"
SENDER, MOVED = f"desk@{DOMAIN}", f"desk@{HOSTED}"
APEX, AUTODISCOVER, OTHER = DOMAIN, f"autodiscover.{DOMAIN}", f"ad.{DOMAIN}"
HOSTED_AUTODISCOVER = f"autodiscover.{HOSTED}"
NAMES = (APEX, AUTODISCOVER, OTHER, HOSTED_AUTODISCOVER)
STEPS = ["autodiscover", "name resolution", "TCP connect", "TLS", "authentication", "sender", "send"]


def url(host: str) -> str:
    return f"https://{host}/autodiscover/autodiscover.svc"


@pytest.fixture
def peer(tls_ca):
    """EWS and Autodiscover on one peer, with a certificate for every name the tests serve."""
    with EwsPeer(tls_ca.issue((*NAMES, "127.0.0.1")), users={USER: PASSWORD}) as served:
        served.discoveries[SENDER] = Discovery(ews_url=served.url)
        yield served


def serve(peer: EwsPeer, *names: str):
    """Let `names` lead to the peer; every other name of the two test domains does not exist."""
    return served_names((DOMAIN, HOSTED), {name: peer.port for name in names})


def discovering(peer: EwsPeer, ca_path, **block) -> dict:
    return exchange_settings(peer, ca_path, from_address=SENDER, ews_url=None, autodiscover=True, **block)


def test_mail_goes_to_the_ews_url_autodiscover_gives_and_the_process_keeps_it(runtime, store, worker, publisher,
                                                                              peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
    worker()
    with serve(peer, AUTODISCOVER):  # the domain itself has no address: the second URL answers
        first = mail_in(store, publisher.publish(event(subject="first", to=["to@example.com"])), "sent")
        second = mail_in(store, publisher.publish(event(subject="second", to=["to@example.com"])), "sent")
    assert [item.message["Subject"] for item in peer.received.snapshot()] == ["first", "second"]
    assert first.message_id and second.message_id
    assert peer.asked.snapshot() == [(AUTODISCOVER, SENDER, USER)]  # asked once, for the first mail


def test_a_send_that_fails_before_ews_answers_asks_autodiscover_again(runtime, store, worker, publisher, peer,
                                                                      tls_ca, config):
    from deskmail.workers.app import enqueuer
    from deskmail.workers.scheduler import Scheduler
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
    broker = worker()
    scheduler = Scheduler(store, enqueuer(broker), config)
    with serve(peer, AUTODISCOVER):
        mail_in(store, publisher.publish(event(to=["to@example.com"])), "sent")
        peer.script(http_status(503))  # the server may have moved: the retry asks Autodiscover first
        event_id = publisher.publish(event(to=["to@example.com"]))
        wait_until(lambda: (m := store.get_mail(event_id)) and m.attempts == 1 and m.state == "queued")
        wait_until(lambda: scheduler.tick() and store.get_mail(event_id).state == "sent")
    assert peer.operations.snapshot() == ["CreateItem 200 NoError", "CreateItem 503", "CreateItem 200 NoError"]
    assert [host for host, _, _ in peer.asked.snapshot()] == [AUTODISCOVER, AUTODISCOVER]


def test_no_autodiscover_anywhere_fails_the_mail_as_configuration_naming_every_url(runtime, store, worker,
                                                                                   publisher, peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
    worker()
    with serve(peer):
        mail = mail_in(store, publisher.publish(event(to=["to@example.com"])), "failed")
    assert mail.reason == "configuration"
    assert url(APEX) in mail.detail and url(AUTODISCOVER) in mail.detail and "cannot resolve" in mail.detail
    assert not peer.received.snapshot()


# --- the Test action ---------------------------------------------------------------------------------------

def test_the_test_action_shows_what_autodiscover_found_then_sends(runtime, peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
    with serve(peer, APEX, AUTODISCOVER):
        checkup = self_test(runtime, "alpha", to="admin@example.com")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == STEPS
    assert checkup.steps[0].detail == f"{url(APEX)} gave {peer.url}"
    assert peer.asked.snapshot() == [(APEX, SENDER, USER)]


def test_redirects_and_a_mailbox_hosted_elsewhere_are_followed(runtime, tls_ca):
    redirects = {APEX: url(OTHER)}
    with EwsPeer(tls_ca.issue((*NAMES, "127.0.0.1")), users={USER: PASSWORD}, discovery_redirects=redirects) as peer:
        peer.discoveries[SENDER] = Discovery(redirect_address=MOVED)
        peer.discoveries[MOVED] = Discovery(ews_url=peer.url, internal=True)
        runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
        with serve(peer, APEX, AUTODISCOVER, OTHER, HOSTED_AUTODISCOVER):
            checkup = self_test(runtime, "alpha")
    assert checkup.accepted, checkup.steps
    assert checkup.steps[0].detail == f"{url(HOSTED_AUTODISCOVER)} gave {peer.url} (the mailbox is {MOVED})"
    # the apex redirected before any login; hosted.example.net itself does not exist
    assert [(host, address) for host, address, _ in peer.asked.snapshot()] == [(OTHER, SENDER),
                                                                               (HOSTED_AUTODISCOVER, MOVED)]
    assert peer.received.snapshot()[0].sender == SENDER


def test_basic_credentials_go_only_where_a_basic_challenge_asks_for_them(runtime, tls_ca):
    with EwsPeer(tls_ca.issue((*NAMES, "127.0.0.1")), users={UPN: PASSWORD}, schemes=("basic",),
                 web_sites=(APEX,)) as peer:
        peer.discoveries[SENDER] = Discovery(ews_url=peer.url)
        runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path, username=UPN, auth_type="basic"))
        with serve(peer, APEX, AUTODISCOVER):
            checkup = self_test(runtime, "alpha")
    assert checkup.accepted, checkup.steps
    assert peer.site_logins.snapshot() == [""]  # the web site at the apex never saw the password
    assert peer.asked.snapshot() == [(AUTODISCOVER, SENDER, UPN)]
    assert ("basic", UPN, True) in peer.logins.snapshot()


def test_a_redirect_to_plain_http_is_not_followed(runtime, tls_ca):
    with EwsPeer(tls_ca.issue((*NAMES, "127.0.0.1")), users={USER: PASSWORD},
                 discovery_redirects={APEX: f"http://{OTHER}/autodiscover/autodiscover.svc"}) as peer:
        runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
        with serve(peer, APEX, OTHER):
            step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "autodiscover"
    assert f"redirected to http://{OTHER}/autodiscover/autodiscover.svc, not followed" in step.detail
    assert "ews_url" in step.advice and not peer.asked.snapshot()


def test_a_redirect_loop_ends_the_search(runtime, tls_ca):
    with EwsPeer(tls_ca.issue((*NAMES, "127.0.0.1")), users={USER: PASSWORD},
                 discovery_redirects={APEX: url(OTHER), OTHER: url(APEX)}) as peer:
        runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
        with serve(peer, APEX, AUTODISCOVER, OTHER):
            step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "autodiscover" and f"{url(OTHER)}: redirected to {url(APEX)} again (a loop)" in step.detail
    assert url(AUTODISCOVER) not in step.detail  # a followed redirect replaces the URLs left to ask


def test_an_address_autodiscover_does_not_know_ends_the_search(runtime, peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path, sender="nobody@" + DOMAIN))
    with serve(peer, APEX, AUTODISCOVER):
        step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "autodiscover" and "InvalidUser" in step.detail
    assert [host for host, _, _ in peer.asked.snapshot()] == [APEX]  # the service's answer is final


def test_a_wrong_password_fails_at_autodiscover_with_the_login_advice(runtime, peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path, password="Wrong-Canary-Pass"))
    with serve(peer, AUTODISCOVER):
        step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "autodiscover" and f"refused the login of '{USER}'" in step.detail
    assert "password" in step.advice and "Canary" not in step.detail + step.advice


def test_a_self_signed_autodiscover_certificate_is_named(runtime, tls_ca):
    with EwsPeer(tls_ca.self_signed((*NAMES, "127.0.0.1")), users={USER: PASSWORD}) as peer:
        runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
        with serve(peer, AUTODISCOVER):
            step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "autodiscover" and "self-signed" in step.detail and url(AUTODISCOVER) in step.detail
    assert not peer.asked.snapshot()


def test_every_test_action_asks_autodiscover_afresh(runtime, peer, tls_ca):
    runtime.settings.save("alpha", discovering(peer, tls_ca.ca_path))
    with serve(peer, AUTODISCOVER):
        assert self_test(runtime, "alpha").accepted
        assert self_test(runtime, "alpha").accepted
    assert len(peer.asked.snapshot()) == 2
