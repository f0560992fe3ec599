"""Event schema v1.1 (attachments, threading, from_name), the caps, and the message parts built from them."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import urllib.parse
import uuid
from datetime import datetime, timezone

import pytest

from deskmail import schemas
from deskmail.producers.publisher import batches, prepare
from deskmail.schemas.mail_parts import AttachmentCaps, decoded_size, size_problems
from deskmail.workers.attachments import Attachment, MissingAttachment, attachments_of, extract
from deskmail.workers.message import Sender, build
from deskmail.workers.mime_parts import thread_root, threading
from deskmail.workers.transports.base import Envelope, TransportFailure
from deskmail.workers.transports.gmail_oauth2 import MAX_ATTACHMENT_BYTES, check_gmail_cap

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
SENDER = Sender("desk@example.org", "Service Desk")


def event(**extra) -> dict:
    return {"event_id": str(uuid.uuid4()), "project": "helpdesk", "kind": "record", "to": ["a@example.com"],
            "subject": "Re: [#1] printer", "text": "Hello\n", **extra}


def attachment(name: str = "a.txt", data: bytes = b"hello", **extra) -> dict:
    return {"filename": name, "content_type": "text/plain", "content": base64.b64encode(data).decode(), **extra}


def problems(payload: dict, name: str = schemas.EVENT) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in schemas.validate(name, payload)]


def parsed(ev: dict, sender: Sender = SENDER) -> email.message.EmailMessage:
    stored, blobs = extract(ev)
    data = build(stored, sender, f"<{ev['event_id']}@example.org>", NOW, attachments_of(stored, blobs))
    return email.message_from_bytes(data, policy=email.policy.strict)  # type: ignore[return-value]


def test_every_version_1_event_is_a_valid_version_1_1_event_and_version_1_refuses_the_new_fields():
    old = event(html="<p>Hi</p>", headers={"X-Ticket": "1"}, record={"type": "ticket", "id": "1"})
    assert problems(old) == [] and problems(old, "notification-event.v1") == []
    assert ("attachments", "is not allowed") in problems(event(attachments=[attachment()]), "notification-event.v1")


@pytest.mark.parametrize("value", ["CAF1@x", "<no-at-sign>", "<a b@c>", "<a@b>\r\nBcc: x@y", "<a@b><c@d>",
                                   "<" + "a" * 250 + "@b>"])
def test_in_reply_to_and_references_must_be_message_ids_of_bounded_length(value):
    assert problems(event(in_reply_to=value))[0][0] == "in_reply_to"
    assert problems(event(references=[value]))[0][0] == "references[0]"


def test_references_are_bounded_in_number_and_good_ones_pass():
    assert problems(event(in_reply_to="<CAF=x7Q+1@mail.example.com>", references=["<a.b@[127.0.0.1]>"])) == []
    assert problems(event(references=[f"<{i}@x>" for i in range(51)])) == [("references", "must have at most 50 items")]


def test_from_name_is_one_line_of_text_and_only_for_record_mails():
    assert problems(event(from_name="Alice via Service Desk")) == []
    assert ("from_name", "contains a line break; header text must be one line") in \
        problems(event(from_name="Alice\r\nBcc: x@y"))
    assert problems(event(kind="notification", from_name="Alice"))[0][0] == "from_name"


def test_an_attachment_needs_real_base64_a_plain_file_name_and_a_unique_content_id():
    found = problems(event(attachments=[
        {**attachment("bad.bin"), "content": "aGVsbG8"}, attachment("../etc/passwd"),
        attachment("ok\n.txt"), attachment("x.png", content_id="logo@d"), attachment("y.png", content_id="LOGO@d"),
        {**attachment(), "content_type": "text/plain; charset=utf-8"}]))
    assert found == [
        ("attachments[0].content", "of 'bad.bin' is not base64 (RFC 4648 alphabet, padded to a multiple of 4 "
                                   "characters, no line breaks)"),
        ("attachments[1].filename", "must be a file name without / or \\"),
        ("attachments[2].filename", "contains a line break; header text must be one line"),
        ("attachments[4].content_id", "repeats the content id of another attachment"),
        ("attachments[5].content_type", "must be a MIME type such as application/pdf (type/subtype, no parameters)")]


def test_caps_name_the_attachment_and_the_setting_that_bounds_it():
    caps = AttachmentCaps(per_attachment=10, per_event=15, count=2)
    ev = event(attachments=[attachment("big.bin", b"x" * 11), attachment("b.txt", b"y" * 5), attachment("c.txt")])
    assert [(p.path, p.message) for p in size_problems(ev, caps)] == [
        ("attachments", "has 3 attachments, more than the 2 allowed (DESKMAIL_ATTACHMENTS_MAX_COUNT)"),
        ("attachments[0]", "'big.bin' is 11 bytes, over the 10 bytes allowed per attachment "
                           "(DESKMAIL_ATTACHMENT_MAX_BYTES)"),
        ("attachments", "'big.bin', 'b.txt', 'c.txt' are 21 bytes together, over the 15 bytes allowed per mail "
                        "(DESKMAIL_ATTACHMENTS_MAX_BYTES)")]
    assert size_problems(event(attachments=[attachment(data=b"x" * 10)]), caps) == []


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 1000, 1001, 1002])
def test_the_decoded_size_is_computed_without_decoding(size):
    assert decoded_size(base64.b64encode(b"z" * size).decode()) == size


def test_admission_keeps_references_in_the_event_and_the_bytes_once_per_hash():
    ev = event(attachments=[attachment("a.txt", b"same"), attachment("b.txt", b"same")])
    stored, blobs = extract(ev)
    digest = hashlib.sha256(b"same").hexdigest()
    assert blobs == {digest: b"same"} and "content" in ev["attachments"][0]
    assert stored["attachments"][1] == {"filename": "b.txt", "content_type": "text/plain", "inline": False,
                                        "sha256": digest, "size": 4}
    with pytest.raises(MissingAttachment, match="'a.txt' is no longer stored"):
        attachments_of(stored, {})


def test_a_long_non_ascii_file_name_is_sent_as_rfc_2231_continuations_and_read_back_whole():
    name = "Prüfbericht für März – Größenänderung der Übersicht " * 3 + ".pdf"
    message = parsed(event(attachments=[attachment(name, b"%PDF")]))
    [part] = [p for p in message.walk() if p.get_filename()]
    assert part.get_filename() == name and part.get_payload(decode=True) == b"%PDF"
    ev = event(attachments=[attachment(name, b"%PDF")])
    stored, blobs = extract(ev)
    raw = build(stored, SENDER, "<x@example.org>", NOW, attachments_of(stored, blobs)).decode()
    assert " filename*0*=utf-8''Pr%C3%BCfbericht" in raw and max(map(len, raw.splitlines())) <= 78
    pieces = [line.split("=", 1)[1].rstrip(";").removeprefix("utf-8''") for line in raw.splitlines()
              if line.startswith(" filename*")]
    assert len(pieces) > 3 and all(urllib.parse.unquote(p, errors="strict") for p in pieces)  # whole characters


def test_inline_images_without_html_are_attached_and_html_only_mail_gets_related():
    plain = parsed(event(attachments=[attachment("logo.png", b"png", content_id="logo@d")]))
    assert [p.get_content_type() for p in plain.walk()] == ["multipart/mixed", "text/plain", "text/plain"]
    html = parsed(event(text=None, html='<img src="cid:logo@d">',
                        attachments=[attachment("logo.png", b"png", content_id="logo@d")]))
    assert [p.get_content_type() for p in html.walk()] == ["multipart/related", "text/html", "text/plain"]
    assert html.get_param("type") == "text/html"


def test_notifications_say_they_are_automatic_and_record_mails_do_not():
    notification = parsed(event(kind="notification"))
    assert notification["Auto-Submitted"] == "auto-generated" and notification["X-Auto-Response-Suppress"] == "All"
    record = parsed(event())
    assert record["Auto-Submitted"] is None and record["X-Auto-Response-Suppress"] is None


def test_list_unsubscribe_only_on_notifications_and_only_when_the_project_sets_a_template():
    sender = Sender("desk@example.org", list_unsubscribe="https://d.example.org/u/{project}/{event_id}",
                    list_unsubscribe_post=False)
    ev = event(kind="notification")
    message = parsed(ev, sender)
    assert message["List-Unsubscribe"] == f"<https://d.example.org/u/helpdesk/{ev['event_id']}>"
    assert message["List-Unsubscribe-Post"] is None
    assert parsed(event(), sender)["List-Unsubscribe"] is None


def test_the_agents_name_replaces_the_projects_on_record_mails_but_the_address_stays():
    assert parsed(event(from_name="Jürgen via Service Desk"))["From"].addresses[0].display_name == \
        "Jürgen via Service Desk"
    assert parsed(event(from_name="Jürgen"))["From"].addresses[0].addr_spec == "desk@example.org"


def test_a_record_thread_root_is_stable_per_project_record_type_and_id():
    one = event(record={"type": "ticket", "id": "1042"})
    assert thread_root(one, "example.org") == thread_root({**one, "event_id": "x"}, "example.org")
    assert thread_root(one, "example.org") != thread_root({**one, "project": "other"}, "example.org")
    assert thread_root(one, "example.org") != thread_root({**one, "record": {"type": "change", "id": "1042"}},
                                                          "example.org")
    assert threading(event(), "example.org") == (None, [])
    assert threading(event(kind="notification", record=one["record"]), "example.org") == (None, [])


def test_given_threading_is_completed_from_either_field():
    assert threading(event(references=["<a@x>", "<b@x>"]), "d") == ("<b@x>", ["<a@x>", "<b@x>"])
    assert threading(event(in_reply_to="<b@x>"), "d") == ("<b@x>", ["<b@x>"])


def test_gmail_refuses_more_than_25_mb_of_attachments_before_connecting():
    def envelope(size: int) -> Envelope:
        return Envelope(uuid.uuid4(), "desk@example.org", ("a@example.com",), b"", "<x@y>",
                        (Attachment("big.bin", "application/octet-stream", b"\0" * size),))
    check_gmail_cap(envelope(MAX_ATTACHMENT_BYTES))
    with pytest.raises(TransportFailure, match=f"{MAX_ATTACHMENT_BYTES + 1} bytes together, over Gmail's cap"):
        check_gmail_cap(envelope(MAX_ATTACHMENT_BYTES + 1))


def test_publish_many_sends_an_event_with_attachments_alone_in_its_broker_message():
    caps = AttachmentCaps()
    plain = [prepare(event(kind="notification"), caps) for _ in range(3)]
    attached = [prepare(event(kind="notification", attachments=[attachment()]), caps) for _ in range(2)]
    sent = batches([attached[0], *plain, attached[1]])
    assert [len(b.event_ids) for b in sent] == [3, 1, 1]
    assert [b.event_ids[0] for b in sent[1:]] == [a.event_id for a in attached]
