"""The MIME builder: what receivers parse out of the bytes deskmail writes."""

from __future__ import annotations

import email
import email.message
import email.policy
import uuid
from datetime import datetime, timezone

import pytest

from deskmail import schemas
from deskmail.workers.message import Sender, build, message_id_for

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


# --- fidelity: what a strict parser reads out of the bytes -----------------------------------

def strict(data: bytes) -> email.message.EmailMessage:
    """The bytes as they are (CRLF), parsed with the stdlib's strict policy: any defect raises."""
    return email.message_from_bytes(data, policy=email.policy.strict)


def test_every_line_ends_with_crlf_also_where_a_unicode_display_name_is_folded():
    long_name = "Jürgen Ä " * 12
    ev = event(text="x", to=[{"address": "a@example.com", "name": long_name.strip()}],
               cc=[{"address": "c@example.com", "name": "Ünïcödé Nämé"}])
    data = build(ev, Sender("desk@example.org", "Sërvice Dësk " * 8), "<x@e.org>", NOW)
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    msg = strict(data)
    assert msg["To"].addresses[0].display_name == long_name.strip()
    assert msg["From"].addresses[0].display_name == "Sërvice Dësk " * 8


@pytest.mark.parametrize("name", ["A. Example", ".L", "Doe, John", 'Say "hi"', "a@b", "x (y)", "back\\slash",
                                  "semi;colon", "L.", "[x]", "<angle>", ": colon"])
def test_display_names_that_rfc_5322_does_not_allow_bare_are_quoted_and_read_back(name):
    data = build(event(text="x", to=[{"address": "a@example.com", "name": name}]),
                 Sender("d@example.org", name), "<x@e.org>", NOW)
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert f"To: {name} <" not in head
    msg = strict(data)
    [to] = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, "a@example.com")
    assert msg["From"].addresses[0].display_name == name


def test_plain_names_stay_bare():
    data = build(event(text="x", to=[{"address": "a@example.com", "name": "Ann O'Neil-Smith"}]),
                 Sender("d@example.org"), "<x@e.org>", NOW)
    assert b"To: Ann O'Neil-Smith <a@example.com>" in data


def test_subject_with_edge_or_doubled_spaces_survives():
    for subject in (" leading", "trailing ", "two  spaces", "\ttab"):
        msg = strict(build(event(text="x", subject=subject), Sender("d@example.org"), "<x@e.org>", NOW))
        assert msg["Subject"] == subject


def test_a_text_body_holding_the_boundary_cannot_replace_the_html_part():
    first = build(event(text="probe", html="<p>probe</p>"), Sender("d@example.org"), "<x@e.org>", NOW)
    boundary = strict(first).get_boundary()
    assert boundary
    forged = f"hello\n--{boundary}\nContent-Type: text/html\n\n<p>forged</p>\n--{boundary}--\n"
    data = build(event(text=forged, html="<p>real</p>"), Sender("d@example.org"), "<x@e.org>", NOW)
    msg = strict(data)
    assert msg.get_boundary() != boundary
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg.get_body(("html",)).get_content().strip() == "<p>real</p>"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == forged


def test_the_boundary_is_random_per_message_not_derived_from_the_event():
    ev = event(text="a", html="<p>b</p>")
    boundaries = {strict(build(ev, Sender("d@example.org"), "<x@e.org>", NOW)).get_boundary() for _ in range(5)}
    assert len(boundaries) == 5


def test_domains_go_into_headers_as_punycode_and_local_parts_as_given():
    ev = event(text="x", to=[{"address": "a@bücher.ch", "name": "Bü"}], cc=[{"address": "ü@bücher.ch"}])
    data = build(ev, Sender("desk@exämple.org"), "<x@e.org>", NOW)
    msg = email.message_from_string(data.decode("utf-8"), policy=email.policy.SMTPUTF8)
    assert msg["To"].addresses[0].addr_spec == "a@xn--bcher-kva.ch"
    assert msg["Cc"].addresses[0].addr_spec == "ü@xn--bcher-kva.ch"
    assert msg["From"].addresses[0].addr_spec == "desk@xn--exmple-cua.org"


def test_graph_and_ews_see_a_unicode_domain_recipient_in_to_as_named_not_as_a_blind_copy():
    from deskmail.workers.transports.base import Envelope
    ev = event(text="x", to=[{"address": "a@bücher.ch"}], bcc=[{"address": "hidden@bücher.ch"}])
    data = build(ev, Sender("d@example.org"), "<x@e.org>", NOW)
    envelope = Envelope(uuid.uuid4(), "d@example.org", ("a@bücher.ch", "hidden@bücher.ch"), data, "<x@e.org>")
    assert envelope.blind_copies() == ["hidden@bücher.ch"]
