"""HTTPS through the environment's proxy (HTTPS_PROXY, NO_PROXY): tokens, Graph and EWS tunnel through a local
CONNECT proxy, the Test action probes the tunnel, and an answer lost behind the proxy is still ambiguous."""

from __future__ import annotations

import pytest

from tests.integration.test_exchange import PASSWORD, USER, exchange_settings as ews_settings, failed_step, \
    mail_in, publish
from tests.integration.test_exchange_oauth2 import SECRET, exchange_settings
from tests.peers.ews import Answer, EwsPeer
from tests.peers.microsoft import MicrosoftPeer
from tests.peers.proxy import ProxyPeer
from deskmail.workers.selftest import self_test

TUNNEL = ["TCP connect", "TLS"]


@pytest.fixture
def proxy(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ProxyPeer() as peer:
        monkeypatch.setenv("HTTPS_PROXY", peer.url)
        yield peer


@pytest.fixture
def microsoft(tls_ca):
    with MicrosoftPeer(tls_ca.issue(), client_secret=SECRET) as peer:
        yield peer


@pytest.fixture
def exchange(tls_ca):
    with EwsPeer(tls_ca.issue(), users={USER: PASSWORD}) as peer:
        yield peer


def test_tokens_and_graph_go_through_the_proxy_and_the_test_action_probes_the_tunnel(runtime, proxy, microsoft,
                                                                                    tls_ca):
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha")
    assert checkup.accepted, checkup.steps
    assert [s.name for s in checkup.steps] == [*TUNNEL, "token", *TUNNEL, "authentication", "sender", "send"]
    assert "opened a tunnel to 127.0.0.1" in checkup.steps[0].detail and "HTTPS_PROXY" in checkup.steps[0].detail
    tunnels = proxy.tunnels.snapshot()
    assert set(tunnels) == {microsoft.url.removeprefix("https://")} and len(tunnels) >= 4  # two probes, token, sendMail
    assert len(microsoft.sent.snapshot()) == 1


def test_ews_mail_from_the_worker_goes_through_the_proxy(runtime, store, worker, publisher, proxy, exchange,
                                                        tls_ca):
    mail = mail_in(store, publish(runtime, worker, publisher, ews_settings(exchange, tls_ca.ca_path)), "sent")
    assert mail.message_id and len(exchange.received.snapshot()) == 1
    assert f"127.0.0.1:{exchange.port}" in proxy.tunnels.snapshot()


def test_an_ews_answer_lost_behind_the_proxy_is_ambiguous_not_retried(runtime, store, worker, publisher, proxy,
                                                                     exchange, tls_ca):
    exchange.script(Answer(drop=True))
    mail = mail_in(store, publish(runtime, worker, publisher, ews_settings(exchange, tls_ca.ca_path)), "ambiguous")
    assert "may or may not" in mail.detail and proxy.tunnels.snapshot()
    assert exchange.operations.snapshot() == ["CreateItem dropped"] and mail.attempts == 1
    assert exchange.received.snapshot() == []


def test_a_tunnel_the_proxy_refuses_fails_the_test_action_naming_the_proxy(runtime, proxy, microsoft, tls_ca):
    proxy.refused = (microsoft.url.removeprefix("https://"),)
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    step = failed_step(self_test(runtime, "alpha"))
    assert step.name == "TCP connect" and "refused a tunnel" in step.detail and "403 Forbidden" in step.detail
    assert "NO_PROXY" in step.advice


def test_hosts_in_no_proxy_are_reached_directly(runtime, proxy, microsoft, tls_ca, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    runtime.settings.save("alpha", exchange_settings(microsoft, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha")
    assert checkup.accepted, [(s.name, s.detail) for s in checkup.steps]
    assert checkup.steps[0].name == "name resolution"
    assert proxy.tunnels.snapshot() == []
