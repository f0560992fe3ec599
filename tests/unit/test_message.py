"""The MIME builder: what receivers parse out of the bytes deskmail writes."""

from __future__ import annotations

import email
import email.policy
import uuid
from datetime import datetime, timezone

import schemas
from workers.message import Sender, build, message_id_for

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)


def event(**extra) -> dict:
    base = {"event_id": str(uuid.uuid4()), "project": "p", "kind": "record",
            "to": [{"address": "a@example.com", "name": "Ann Example"}], "subject": "Ticket #1"}
    base.update(extra)
    return base


def test_text_mail_has_sender_recipients_subject_and_derived_message_id():
    ev = event(text="Hello\n.line starting with a dot\n", cc=[{"address": "c@example.com"}])
    mid = message_id_for(ev["event_id"], "example.org")
    msg = parse(build(ev, Sender("desk@example.org", "Service Desk"), mid, NOW))
    assert msg["From"] == "Service Desk <desk@example.org>"
    assert msg["To"] == "Ann Example <a@example.com>" and msg["Cc"] == "c@example.com"
    assert msg["Message-ID"] == f"<{ev['event_id']}@example.org>"
    assert msg["X-Deskmail-Kind"] == "record"
    assert msg.get_content() == "Hello\n.line starting with a dot\n"


def test_unicode_subject_name_and_body_survive_encoding():
    ev = event(subject="Störung: Drucker 🖨 im 3. Stock", text="Grüße\n",
               to=[{"address": "a@example.com", "name": "Jürgen Ä"}])
    data = build(ev, Sender("desk@example.org"), "<x@example.org>", NOW)
    assert data.isascii()
    msg = parse(data)
    assert msg["Subject"] == "Störung: Drucker 🖨 im 3. Stock"
    assert msg["To"].addresses[0].display_name == "Jürgen Ä"
    assert msg.get_content() == "Grüße\n"


def test_text_and_html_become_multipart_alternative():
    msg = parse(build(event(text="plain", html="<p>rich</p>"), Sender("d@example.org"), "<x@e.org>", NOW))
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert msg.get_body(("html",)).get_content().strip() == "<p>rich</p>"


def test_bcc_is_an_envelope_recipient_but_never_a_header():
    ev = event(text="x", bcc=[{"address": "hidden@example.com"}], cc=[{"address": "A@example.com"}])
    data = build(ev, Sender("d@example.org"), "<x@e.org>", NOW)
    assert b"hidden@example.com" not in data
    assert schemas.unique_recipients(ev) == ["a@example.com", "hidden@example.com"]


def test_long_lines_are_quoted_printable_not_cut():
    line = "x" * 2000
    msg = parse(build(event(text=line), Sender("d@example.org"), "<x@e.org>", NOW))
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().rstrip("\n") == line


def test_custom_x_headers_are_written_and_reply_to_falls_back_to_the_project():
    ev = event(text="x", headers={"X-Ticket": "42"})
    msg = parse(build(ev, Sender("d@example.org", reply_to="help@example.org"), "<x@e.org>", NOW))
    assert msg["X-Ticket"] == "42" and msg["Reply-To"] == "help@example.org"
