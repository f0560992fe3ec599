"""The Test action over SMTP and Gmail: a real test mail, each step named, the first failure diagnosed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pika
import pytest

from deskmail.producers.control import NoAnswer, run_test
from deskmail.producers.publisher import Publisher

from tests.conftest import TEST_KEY, wait_until
from tests.integration.helpers import SENDER, gmail_settings, smtp_settings
from tests.peers.google_token import GoogleTokenPeer, service_account_key
from tests.peers.smtp import SmtpPeer
from deskmail.workers.app import build_broker
from deskmail.workers.constants import Queue
from deskmail.workers.control import Controller
from deskmail.workers.remote_test import SelfTestRunner
from deskmail.workers.selftest import self_test

PASSWORD = "s3cret-Pa55"
STARTTLS_STEPS = ["name resolution", "TCP connect", "capabilities", "TLS", "capabilities", "authentication",
                  "sender", "send"]


def names(checkup) -> list[str]:
    return [step.name for step in checkup.steps]


def failure(checkup):
    """The failed (last) step; the checkup must have failed."""
    assert not checkup.accepted
    last = checkup.steps[-1]
    assert last.status == "failed" and all(step.status == "passed" for step in checkup.steps[:-1])
    return last


@pytest.fixture
def starttls_peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        yield peer


def test_the_test_action_sends_a_real_mail_to_the_sender_and_names_every_step(runtime, starttls_peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path))
    checkup = self_test(runtime, "alpha")
    assert checkup.accepted and names(checkup) == STARTTLS_STEPS
    assert "STARTTLS" in checkup.steps[2].detail and "AUTH" in checkup.steps[4].detail
    assert "verified" in checkup.steps[3].detail
    [received] = starttls_peer.wait_for(1)
    assert received.rcpt_tos == ("desk@example.org",) and received.auth_user == "desk"
    assert received.message["Subject"] == "deskmail test mail for project alpha"


def test_a_test_mail_goes_to_the_given_address(runtime, starttls_peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path))
    assert self_test(runtime, "alpha", to="admin@example.com").accepted
    assert starttls_peer.wait_for(1)[0].rcpt_tos == ("admin@example.com",)


def test_a_wrong_password_fails_at_authentication_without_echoing_it(runtime, starttls_peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path, password="Wrong-Canary-99"))
    step = failure(self_test(runtime, "alpha"))
    assert step.name == "authentication" and "535" in step.detail and "'desk'" in step.detail
    assert "username and password" in step.advice
    assert "Wrong-Canary-99" not in json.dumps([step.detail, step.advice])
    assert starttls_peer.messages == []


def test_a_self_signed_certificate_fails_at_tls_and_names_ca_file(runtime, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.self_signed(), users={"desk": PASSWORD}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        step = failure(self_test(runtime, "alpha"))
    assert step.name == "TLS" and "self-signed" in step.detail and "ca_file" in step.advice


def test_starttls_settings_against_an_implicit_tls_port_are_named_as_a_wrong_port(runtime, tls_ca):
    with SmtpPeer(security="tls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, timeout_seconds=2))
        step = failure(self_test(runtime, "alpha"))
    assert step.name == "capabilities" and "no SMTP greeting" in step.detail
    assert "implicit-TLS" in step.advice and "`tls`" in step.advice


def test_implicit_tls_settings_against_a_starttls_port_are_named_as_a_wrong_port(runtime, starttls_peer, tls_ca):
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path, security="tls"))
    step = failure(self_test(runtime, "alpha"))
    assert step.name == "TLS" and "does not speak TLS at once" in step.detail
    assert "`starttls`" in step.advice


def test_implicit_tls_passes_with_tls_before_the_greeting(runtime, tls_ca):
    with SmtpPeer(security="tls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, security="tls"))
        checkup = self_test(runtime, "alpha")
    assert checkup.accepted
    assert names(checkup) == ["name resolution", "TCP connect", "TLS", "capabilities", "authentication",
                              "sender", "send"]


def test_a_refused_sender_fails_at_sender(runtime, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                  mail_from_reply="550 5.7.60 SMTP; Client does not have permissions to send as this sender") as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        step = failure(self_test(runtime, "alpha"))
    assert step.name == "sender" and "5.7.60" in step.detail and "desk@example.org" in step.advice


def test_a_closed_port_fails_at_tcp_connect(runtime):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with SmtpPeer() as peer:
            doc = smtp_settings(peer, security="none", auth="none")
        doc["smtp"]["port"] = port
        runtime.settings.save("alpha", doc)
        step = failure(self_test(runtime, "alpha"))
    assert step.name == "TCP connect" and "refused" in step.detail and str(port) in step.advice


def test_an_unknown_host_fails_at_name_resolution(runtime):
    with SmtpPeer() as peer:
        doc = smtp_settings(peer, security="none", auth="none")
    doc["smtp"]["host"] = "mail.does-not-exist.invalid"
    runtime.settings.save("alpha", doc)
    step = failure(self_test(runtime, "alpha"))
    assert step.name == "name resolution" and "mail.does-not-exist.invalid" in step.detail


def test_gmail_test_action_gets_a_token_then_sends_over_xoauth2(runtime, tls_ca):
    key, public = service_account_key()
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"ya29.test-token"}) as smtp, \
            GoogleTokenPeer(tls_ca.issue(), public_key=public) as token:
        runtime.settings.save("alpha", gmail_settings(smtp, token, tls_ca.ca_path, service_account_key=key))
        checkup = self_test(runtime, "alpha")
        assert checkup.accepted and names(checkup) == ["token", *STARTTLS_STEPS]
        assert smtp.wait_for(1)[0].auth_user == SENDER


def test_gmail_expired_refresh_token_fails_at_token_with_googles_code(runtime, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"ya29.test-token"}) as smtp, \
            GoogleTokenPeer(tls_ca.issue(), refresh_tokens={"1//good": ("cid", "csecret")}) as token:
        runtime.settings.save("alpha", gmail_settings(smtp, token, tls_ca.ca_path, client_id="cid",
                                                      client_secret="csecret", refresh_token="1//revoked"))
        step = failure(self_test(runtime, "alpha"))
    assert step.name == "token" and "invalid_grant" in step.detail and "refresh token" in step.advice
    assert "1//revoked" not in step.detail + step.advice


def deskmail(config, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESKMAIL_DATABASE_URL": config.database_url, "DESKMAIL_AMQP_URL": config.amqp_url,
           "DESKMAIL_SECRET_KEYS": TEST_KEY, "DESKMAIL_OUTBOUND_ALLOW": "127.0.0.0/8",
           "DESKMAIL_CONTROL_KEY": config.control_key}
    return subprocess.run([sys.executable, "-m", "deskmail.producers.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_settings_test_runs_on_a_transport_worker_and_prints_its_steps_and_host(config, runtime, worker,
                                                                               starttls_peer, tls_ca):
    worker()
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path))
    done = deskmail(config, "settings", "test", "alpha", "--to", "admin@example.com")
    assert done.returncode == 0, done.stderr
    assert "ok     authentication" in done.stdout and "Result: the test mail was accepted" in done.stdout
    assert f"Test of project alpha (smtp) on {socket.gethostname()} ({socket.gethostname()}:{os.getpid()})" \
        in done.stdout  # the in-process worker of the test, not the command's own process
    audit = [r for r in runtime.store.audit(limit=10) if r["action"] == "settings.test"]
    assert len(audit) == 1 and audit[0]["result"]["accepted"] and audit[0]["project"] == "alpha"
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path, password="nope-nope"))
    done = deskmail(config, "settings", "test", "alpha", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["accepted"] is False
    assert report["steps"][-1]["name"] == "authentication" and report["steps"][-1]["status"] == "failed"


def test_settings_test_with_attach_sends_a_small_file_with_the_test_mail(config, runtime, worker, starttls_peer,
                                                                        tls_ca):
    worker()
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path))
    done = deskmail(config, "settings", "test", "alpha", "--attach")
    assert done.returncode == 0, done.stderr
    [received] = starttls_peer.wait_for(1)
    [part] = [p for p in received.message.walk() if p.get_filename()]
    assert part.get_filename() == "deskmail-test.txt"
    assert b"test mail for project alpha" in part.get_payload(decode=True)


def test_settings_set_with_test_saves_only_settings_that_send(config, runtime, worker, starttls_peer, tls_ca,
                                                              tmp_path: Path):
    worker()
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(smtp_settings(starttls_peer, tls_ca.ca_path, password="nope-nope")))
    done = deskmail(config, "settings", "set", "alpha", "--file", str(path), "--test")
    assert done.returncode == 1 and "NOT saved" in done.stderr and "FAILED authentication" in done.stdout
    assert runtime.store.get_project("alpha") is None
    path.write_text(json.dumps(smtp_settings(starttls_peer, tls_ca.ca_path)))
    done = deskmail(config, "settings", "set", "alpha", "--file", str(path), "--test")
    assert done.returncode == 0, done.stderr
    assert "saved the smtp settings" in done.stdout and runtime.store.get_project("alpha").settings is not None


def test_the_test_action_waits_for_a_worker_of_the_transport_queue_and_says_which(config, runtime, starttls_peer,
                                                                                  tls_ca):
    broker = build_broker(config)
    broker.declare_queue(Queue.CONTROL, ensure=True)
    broker.close()
    runtime.settings.save("alpha", smtp_settings(starttls_peer, tls_ca.ca_path))
    seen = []
    with Publisher(config.amqp_url, timeout=5) as publisher:
        published = []
        runner = SelfTestRunner(runtime, 600)
        controller = Controller(runtime.store, config.control_key, 600, lambda *a: None,
                                dispatch_test=lambda service, rid: published.append((service, rid)))

        def control_worker():  # the control actor, then (a moment later) a worker of deskmail.smtp
            wait_until(lambda: runtime.store.control_pending(600))
            connection = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
            _m, _p, body = connection.channel().basic_get(Queue.CONTROL, auto_ack=True)
            connection.close()
            controller(json.loads(body)["args"][0])
            wait_until(lambda: seen)
            runner(published[0][1])
        thread = threading.Thread(target=control_worker)
        thread.start()
        answer = run_test(publisher, runtime.store, config.control_key, 5, "alpha", "admin@example.com",
                          on_progress=lambda a: seen.append(a))
        thread.join(30)
    assert published[0][0] == "smtp" and seen[0]["queue"] == "deskmail.smtp" and not seen[0]["steps"]
    steps = [len(a["steps"]) for a in seen if a.get("host")]
    assert steps == sorted(steps) and len(set(steps)) > 2  # the steps arrived one by one
    assert answer["accepted"] and answer["host"].startswith(socket.gethostname())
    runner(published[0][1])  # a redelivered Test message runs nothing
    assert len(starttls_peer.wait_for(1)) == 1
    with Publisher(config.amqp_url, timeout=5) as publisher:
        with pytest.raises(NoAnswer, match="no control worker answered"):
            run_test(publisher, runtime.store, config.control_key, 1, "alpha")


def test_the_advice_for_530_with_auth_none_is_to_configure_a_login(runtime, starttls_peer, tls_ca):
    document = smtp_settings(starttls_peer, tls_ca.ca_path, auth="none")
    document["smtp"].pop("username"), document["smtp"].pop("password")
    runtime.settings.save("alpha", document)
    step = failure(self_test(runtime, "alpha"))
    assert step.name == "sender" and "530" in step.detail
    assert "set auth to plain or login with a username and password" in step.advice
    assert "from address" not in step.advice


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_an_unreadable_ca_file_fails_at_tls_before_connecting(runtime, tls_ca, tmp_path, security):
    with SmtpPeer(security=security, cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tmp_path / "missing-ca.pem", security=security))
        checkup = self_test(runtime, "alpha")
    step = failure(checkup)
    assert names(checkup) == ["TLS"] and "missing-ca.pem" in step.detail and "cannot be used" in step.detail
    assert "readable PEM" in step.advice
