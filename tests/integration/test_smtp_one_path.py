"""The Test action is a send with the step recorder on: a broken step fails both alike, and PIPELINING."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from tests.integration.helpers import SENDER, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.selftest import self_test
from deskmail.workers.transports import phase
from deskmail.workers.transports.base import Envelope, Outcome, TransportFailure
from deskmail.workers.transports.smtp import SmtpSender
from deskmail.workers.transports.smtp_session import Endpoint

PASSWORD = "s3cret-Pa55"
TO = "user@example.com"


def envelope(*recipients: str) -> Envelope:
    return Envelope(uuid.uuid4(), SENDER, recipients, b"Subject: x\r\n\r\nbody\r\n", "<x@example.org>")


def sent_and_tested(runtime, document: dict, to: str = TO) -> tuple[tuple, tuple]:
    """(step, outcome) of a real send through the project's transport, and of the Test action's failed step."""
    runtime.settings.save("alpha", document)
    settings = runtime.settings.load("alpha")
    with pytest.raises(TransportFailure) as raised:
        runtime.transports["smtp"].send(settings, envelope(to))
    checkup = self_test(runtime, "alpha", to)
    last = checkup.steps[-1]
    assert last.status == "failed" and not checkup.accepted
    return (raised.value.step, str(raised.value.outcome)), (last.name, last.outcome)


def test_a_refused_login_fails_the_send_and_the_test_at_authentication_as_configuration(runtime, tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD}) as peer:
        sent, tested = sent_and_tested(runtime, smtp_settings(peer, tls_ca.ca_path, password="wrong"))
    assert sent == tested == ("authentication", "configuration")


def test_a_server_without_starttls_fails_the_send_and_the_test_at_tls_as_configuration(runtime, tls_ca):
    with SmtpPeer() as peer:
        sent, tested = sent_and_tested(runtime, smtp_settings(peer, tls_ca.ca_path, auth="none"))
    assert sent == tested == ("TLS", "configuration")


@pytest.mark.parametrize("pipelining", [False, True], ids=["step by step", "pipelined"])
def test_a_refused_recipient_fails_the_send_and_the_test_at_send_as_permanent(runtime, pipelining):
    with SmtpPeer(rcpt_replies={TO: "550 5.1.1 no such user"}, pipelining=pipelining) as peer:
        sent, tested = sent_and_tested(runtime, smtp_settings(peer, security="none", auth="none"))
    assert sent == tested == ("send", "permanent")


def test_basic_auth_retired_by_exchange_online_is_named_with_the_table_advice(runtime):
    with SmtpPeer(mail_from_reply="530 5.7.57 Client was not authenticated to send anonymous mail") as peer:
        runtime.settings.save("alpha", smtp_settings(peer, security="none", auth="none"))
        last = self_test(runtime, "alpha").steps[-1]
    assert (last.name, last.outcome) == ("sender", "configuration") and "logged-in account" in last.advice


# --- PIPELINING (RFC 2920) -----------------------------------------------------------------------

def loopback_sender() -> SmtpSender:
    return SmtpSender([ipaddress.ip_network("127.0.0.0/8")], final_reply_timeout=5)


def endpoint(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port, "none", timeout=5, final_reply_timeout=5)


def test_a_server_offering_pipelining_gets_mail_rcpts_and_data_in_one_group():
    with SmtpPeer(pipelining=True) as peer:
        delivered = loopback_sender().send(("p", 1), endpoint(peer.port), None, envelope(TO, "b@example.com"))
        [received] = peer.wait_for(1)
    assert list(received.rcpt_tos) == [TO, "b@example.com"] and delivered.refused == {}
    assert b"RCPT TO:<user@example.com>" in peer.behind_mail[0] and peer.behind_mail[0].endswith(b"DATA\r\n")


def test_a_server_without_pipelining_gets_one_command_at_a_time():
    with SmtpPeer() as peer:
        loopback_sender().send(("p", 1), endpoint(peer.port), None, envelope(TO))
        peer.wait_for(1)
    assert peer.behind_mail == [b""]


def test_pipelined_refused_and_deferred_recipients_are_named_and_the_rest_get_the_mail():
    replies = {"gone@example.com": "550 5.1.1 no such user", "later@example.com": "451 4.3.0 try later"}
    with SmtpPeer(pipelining=True, rcpt_replies=replies) as peer:
        delivered = loopback_sender().send(("p", 1), endpoint(peer.port), None,
                                           envelope("gone@example.com", TO, "later@example.com"))
        [received] = peer.wait_for(1)
    assert list(received.rcpt_tos) == [TO]
    assert delivered.refused == {"gone@example.com": "550 5.1.1 no such user"}
    assert delivered.deferred == {"later@example.com": "451 4.3.0 try later"}


def test_pipelined_all_refused_resets_and_the_session_sends_the_next_mail():
    with SmtpPeer(pipelining=True, rcpt_replies={"gone@example.com": "550 5.1.1 no such user"}) as peer:
        sender = loopback_sender()
        with pytest.raises(TransportFailure) as refused:
            sender.send(("p", 1), endpoint(peer.port), None, envelope("gone@example.com"))
        sender.send(("p", 1), endpoint(peer.port), None, envelope(TO))
        [received] = peer.wait_for(1)
    assert refused.value.outcome is Outcome.PERMANENT and refused.value.refused
    assert list(received.rcpt_tos) == [TO] and peer.mail_from_count == 2


def test_pipelined_refused_sender_is_a_configuration_failure_at_sender():
    with SmtpPeer(pipelining=True, mail_from_reply="550 5.7.60 not allowed to send as this") as peer:
        with pytest.raises(TransportFailure) as refused:
            loopback_sender().send(("p", 1), endpoint(peer.port), None, envelope(TO))
    assert (refused.value.outcome, refused.value.step) == (Outcome.CONFIGURATION, "sender")
    assert peer.messages == []


def test_the_phase_hook_runs_after_the_354_and_a_refusal_delivers_nothing():
    seen: list[int] = []

    def lease_lost() -> None:
        seen.append(peer.mail_from_count)  # the pipelined group went out before the hook
        raise TransportFailure(Outcome.TRANSIENT, "lease taken over")

    with SmtpPeer(pipelining=True) as peer:
        with phase.watching(lease_lost), pytest.raises(TransportFailure, match="lease taken over"):
            loopback_sender().send(("p", 1), endpoint(peer.port), None, envelope(TO))
        time.sleep(0.2)
        assert seen == [1] and peer.messages == []  # the message's end never came: nothing delivered


def test_pipelined_sends_to_postfix_smtp_sink(tmp_path):
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not shutil.which(sink):
        pytest.skip("Postfix's smtp-sink is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink will not run as root
    process = subprocess.Popen([sink, *as_root, "-c", f"127.0.0.1:{port}", "10"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        sender = loopback_sender()
        for _ in range(3):
            delivered = sender.send(("sink", 1), endpoint(port), None, envelope(TO, "b@example.com"))
            assert delivered.detail.startswith("250") and not delivered.refused
        smtp, _ = sender.sessions.get(("sink", 1), lambda: None)
        assert smtp.has_extn("pipelining")
        sender.sessions.clear()
    finally:
        process.terminate()
        process.wait(5)
