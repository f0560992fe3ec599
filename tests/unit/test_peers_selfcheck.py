"""The local test peers behave like the servers they stand in for."""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
from pathlib import Path
from typing import Callable

import pytest
from aiosmtpd.smtp import Envelope

from deskmail.producers.sink import MailSink
from tests.peers.smtp import SmtpPeer
from tests.peers.tlsca import TestCA

MESSAGE = b"From: desk@example.org\r\nTo: a@example.org\r\nMessage-ID: <m1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"
TIMEOUT = 5


def _xoauth2(user: str, token: str, seen: list[bytes]) -> Callable[[bytes | None], str]:
    """Return an smtplib auth object for XOAUTH2 that records server challenges."""

    def answer(challenge: bytes | None = None) -> str:
        if challenge is None:
            return f"user={user}\x01auth=Bearer {token}\x01\x01"
        seen.append(challenge)
        return ""

    return answer


def test_starttls_and_plain_login_deliver_and_record_the_user(tls_ca: TestCA) -> None:
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret"}) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            client.starttls(context=tls_ca.client_context())
            client.login("desk", "s3cret")
            refused = client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
        [got] = peer.wait_for(1)
    assert refused == {}
    assert (got.mail_from, got.rcpt_tos, got.auth_user) == ("desk@example.org", ("a@example.org",), "desk")
    assert got.data == MESSAGE
    assert got.message["Message-ID"] == "<m1@example.org>"


def test_starttls_peer_refuses_mail_before_starttls(tls_ca: TestCA) -> None:
    with SmtpPeer(security="starttls", cert=tls_ca.issue()) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            code, _ = client.mail("desk@example.org")
    assert code == 530


def test_wrong_password_gets_535(tls_ca: TestCA) -> None:
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret"}) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            client.starttls(context=tls_ca.client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.login("desk", "wrong")
    assert caught.value.smtp_code == 535
    assert peer.messages == []


def test_scripted_rcpt_reply_refuses_only_that_recipient() -> None:
    replies = {"gone@example.org": "550 5.1.1 no such user"}
    with SmtpPeer(rcpt_replies=replies) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            refused = client.sendmail("desk@example.org", ["a@example.org", "gone@example.org"], MESSAGE)
        [got] = peer.wait_for(1)
    assert refused == {"gone@example.org": (550, b"5.1.1 no such user")}
    assert got.rcpt_tos == ("a@example.org",)


def test_scripted_data_reply_and_hook_see_the_envelope() -> None:
    seen: list[list[str]] = []
    hooked = threading.Event()

    def hook(envelope: Envelope) -> None:
        seen.append(list(envelope.rcpt_tos))
        hooked.set()

    peer = SmtpPeer(data_reply="451 4.3.0 try later", before_data_reply=hook)
    with peer, smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
    assert caught.value.smtp_code == 451
    assert hooked.is_set() and seen == [["a@example.org"]]
    assert peer.messages == []


def test_implicit_tls_peer_accepts_smtp_ssl_with_auth_login(tls_ca: TestCA) -> None:
    with SmtpPeer(security="tls", cert=tls_ca.issue(), users={"desk": "pw"}) as peer:
        with smtplib.SMTP_SSL(peer.host, peer.port, timeout=TIMEOUT, context=tls_ca.client_context()) as client:
            client.ehlo()
            client.user, client.password = "desk", "pw"
            code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert code == 235
            client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
        [got] = peer.wait_for(1)
    assert got.auth_user == "desk"


def test_xoauth2_good_token_is_accepted_and_records_the_user(tls_ca: TestCA) -> None:
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"tok-1"}) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            client.starttls(context=tls_ca.client_context())
            client.ehlo()  # auth(), unlike login(), does not re-EHLO after STARTTLS
            code, _ = client.auth("XOAUTH2", _xoauth2("desk@example.org", "tok-1", []))
            client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
        [got] = peer.wait_for(1)
    assert code == 235
    assert got.auth_user == "desk@example.org"


def test_xoauth2_bad_token_gets_json_challenge_then_535(tls_ca: TestCA) -> None:
    challenges: list[bytes] = []
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"tok-1"}) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            client.starttls(context=tls_ca.client_context())
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.auth("XOAUTH2", _xoauth2("desk@example.org", "stale", challenges))
    assert (caught.value.smtp_code, caught.value.smtp_error) == (535, b"5.7.8 Username and Password not accepted")
    expected = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    assert [json.loads(c) for c in challenges] == [expected]


@pytest.mark.parametrize("which", ["self_signed", "wrong_host"])
def test_untrusted_or_wrong_host_certificate_fails_verification(tls_ca: TestCA, which: str) -> None:
    with SmtpPeer(security="starttls", cert=getattr(tls_ca, which)()) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            with pytest.raises(ssl.SSLCertVerificationError) as caught:
                client.starttls(context=tls_ca.client_context())
    expected = "self-signed certificate" if which == "self_signed" else "IP address mismatch"
    assert expected in str(caught.value)


def test_mail_sink_writes_eml_files_counts_and_tracks(tmp_path: Path) -> None:
    second = MESSAGE.replace(b"<m1@", b"<m2@")
    with MailSink("127.0.0.1", 0, tmp_path, track=True) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=TIMEOUT) as client:
            client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
            client.sendmail("desk@example.org", ["b@example.org"], second)
        count, accepted = sink.count, sink.accepted_at
    files = sorted(tmp_path.iterdir())
    assert count == 2
    assert [f.name[:7] for f in files] == ["000001-", "000002-"]
    assert all(f.suffix == ".eml" and len(f.stem) == 15 for f in files)
    assert [f.read_bytes() for f in files] == [MESSAGE, second]
    assert set(accepted) == {"<m1@example.org>", "<m2@example.org>"}


def test_mail_sink_continues_numbering_after_existing_files(tmp_path: Path) -> None:
    (tmp_path / "000041-deadbeef.eml").write_bytes(b"x")
    with MailSink("127.0.0.1", 0, tmp_path) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=TIMEOUT) as client:
            client.sendmail("desk@example.org", ["a@example.org"], MESSAGE)
    assert sorted(f.name[:6] for f in tmp_path.iterdir()) == ["000041", "000042"]
    assert sink.accepted_at == {}


def test_peer_with_users_refuses_mail_without_auth() -> None:
    with SmtpPeer(users={"desk": "pw"}) as peer:
        with smtplib.SMTP(peer.host, peer.port, timeout=TIMEOUT) as client:
            client.ehlo()
            code, reply = client.mail("desk@example.org")
    assert (code, reply) == (530, b"5.7.0 Authentication required")
