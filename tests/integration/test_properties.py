"""Generated events through the real publisher, RabbitMQ, the worker and an SMTP peer.

Every valid event arrives intact, re-parsed at the peer with the stdlib's strict policy (headers, display
names, addresses, bodies); every invalid one ends `rejected` with its field named; the worker never stops
working; and each header field a caller can influence refuses every injection form.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import re
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deskmail import schemas
from deskmail.producers.publisher import InvalidEvent
from deskmail.schemas.addresses import ascii_domain_form
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import Received, SmtpPeer
from deskmail.workers.constants import Queue

STRICT = email.policy.strict.clone(utf8=True)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Header text: anything printable, spaces and tabs included, never a line break or a control character.
HEADER_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cn"), blacklist_characters="\x85") | \
    st.sampled_from(" \t")
header_text = st.text(HEADER_CHARS, max_size=60).filter(lambda t: "=?" not in t)
name_text = st.text(HEADER_CHARS, min_size=1, max_size=40).filter(lambda t: "=?" not in t)
body_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)
LOCAL = st.text(st.sampled_from("abcxyzABC019.-_+'!#ü日ñ"), min_size=1, max_size=12)
DOMAINS = st.sampled_from(["example.com", "Example.ORG", "bücher.ch", "xn--bcher-kva.ch", "exämple.org", "日本.jp"])


@st.composite
def addresses(draw: Any) -> str:
    """A valid address: ASCII or Unicode local part, ASCII, punycode or Unicode domain."""
    address = f"{draw(LOCAL)}@{draw(DOMAINS)}"
    try:
        schemas.addresses.normalized_address(address)
    except ValueError:
        from hypothesis import assume
        assume(False)
    return address


def recipients(min_size: int = 0, max_size: int = 3):  # noqa: ANN201 - a hypothesis strategy
    one = addresses() | st.builds(lambda a, n: {"address": a, "name": n}, addresses(), name_text)
    return st.lists(one, min_size=min_size, max_size=max_size)


@st.composite
def valid_events(draw: Any) -> dict:
    """An event the contract accepts, with every header field a caller can fill."""
    ev: dict[str, Any] = {"event_id": str(uuid.uuid4()), "project": "alpha",
                          "kind": draw(st.sampled_from(["notification", "record"])),
                          "subject": draw(header_text)}
    for field in ("to", "cc", "bcc"):
        found = draw(recipients())
        if found:
            ev[field] = found
    if not any(field in ev for field in ("to", "cc", "bcc")):
        ev["to"] = [draw(addresses())]
    if draw(st.booleans()):
        ev["reply_to"] = draw(recipients(1, 2))
    bodies = draw(st.sampled_from(["text", "html", "both"]))
    if bodies in ("text", "both"):
        ev["text"] = draw(body_text)
    if bodies in ("html", "both"):
        ev["html"] = draw(body_text)
    names = st.from_regex(r"\AX-[A-Za-z0-9][A-Za-z0-9-]{0,12}\Z").filter(
        lambda n: not n.lower().startswith("x-deskmail-"))
    headers = draw(st.dictionaries(names, header_text, max_size=3))
    unique = {name.lower(): (name, value) for name, value in headers.items()}
    if unique:
        ev["headers"] = dict(unique.values())
    if draw(st.booleans()):
        ev["record"] = {"type": draw(name_text), "id": draw(name_text)}
    problems = schemas.validate(schemas.EVENT, ev)
    from hypothesis import assume
    assume(not problems)
    return ev


@pytest.fixture
def utf8_peer():
    """A plain SMTP server that offers SMTPUTF8 (so Unicode local parts are deliverable)."""
    with SmtpPeer(smtputf8=True) as peer:
        yield peer


def parsed(received: Received) -> email.message.EmailMessage:
    """The message as the peer received it, parsed strictly (any defect raises)."""
    return email.message_from_string(received.data.decode("utf-8"), policy=STRICT)  # type: ignore[return-value]


def arrived(peer: SmtpPeer, message_id: str) -> Received | None:
    return next((r for r in peer.messages if message_id.encode() in r.data), None)


def names_and_addresses(header: Any) -> list[tuple[str, str]]:
    return [(a.display_name, a.addr_spec) for a in header.addresses] if header is not None else []


def expected(items: list) -> list[tuple[str, str]]:
    return [(read_back(item.get("name", "")), ascii_domain_form(item["address"])) for item in items]


def read_back(name: str) -> str:
    """A display name as Python's parser reads it: an ASCII one exactly (a quoted-string keeps it); a non-ASCII
    one travels as an encoded word, whose runs of spaces and tabs Python's parser reads as one space."""
    return name if name.isascii() else re.sub(r"[ \t]+", " ", name)


def same_body(got: str, want: str) -> bool:
    """Line endings are the transport's (CRLF, read back as LF); trailing ones may be added."""
    want = want.replace("\r\n", "\n").replace("\r", "\n")
    return got.replace("\r\n", "\n").rstrip("\n") == want.rstrip("\n")


def assert_intact(ev: dict, received: Received) -> None:
    """Everything the event said is in the message, read back by the strict parser."""
    normalized = schemas.normalize_event(ev)
    msg = parsed(received)
    assert msg["Subject"] == ev["subject"]
    assert names_and_addresses(msg["To"]) == expected(normalized.get("to", []))
    assert names_and_addresses(msg["Cc"]) == expected(normalized.get("cc", []))
    assert msg["Bcc"] is None
    if "reply_to" in ev:
        assert names_and_addresses(msg["Reply-To"]) == expected(normalized["reply_to"])
    for name, value in ev.get("headers", {}).items():
        assert msg[name] == value
    if "record" in ev:
        assert msg["X-Deskmail-Record"] == f"{ev['record']['type']}/{ev['record']['id']}"
    assert {r.lower() for r in received.rcpt_tos} == {r.lower() for r in schemas.unique_recipients(normalized)}
    for subtype in ("plain", "html"):
        want = ev.get("text" if subtype == "plain" else "html")
        part = msg.get_body((subtype,))
        if want is None:
            assert part is None or part.get_content_subtype() != subtype
        else:
            assert part is not None and same_body(part.get_content(), want)


def test_every_valid_generated_event_arrives_intact(runtime, store, worker, publisher, utf8_peer):
    settings = smtp_settings(utf8_peer, security="none", auth="none")
    runtime.settings.save("alpha", {**settings, "from_name": "Desk. Inc."})
    worker()

    @PROPERTY_SETTINGS
    @given(valid_events())
    def one(ev: dict) -> None:
        event_id = publisher.publish(ev)
        mail = wait_until(lambda: (m := store.get_mail(event_id)) and m.state not in ("queued", "sending") and m)
        assert mail.state == "sent", (mail.state, mail.detail)
        received = wait_until(lambda: arrived(utf8_peer, f"<{event_id}@example.org>"), timeout=10)
        assert_intact(ev, received)
        assert parsed(received)["From"].addresses[0].display_name == "Desk. Inc."

    one()


# --- invalid events end rejected, with the field named -------------------------------------

INJECTIONS = ["\r\nBcc: evil@example.net", "\nX-Evil: 1", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x1b[31m",
              "\x00", "\ud800", "=?utf-8?q?=0D=0ABcc:_evil@example.net?=", "=?UTF-8?B?DQpCY2M6IGV2aWw=?=",
              "=?utf-8?q?a?b=0D=0A?=", "=?iso-8859-1?Q?x"]
FIELDS = {
    "subject": lambda ev, bad: ev.update(subject="Hi" + bad),
    "to[0].name": lambda ev, bad: ev.update(to=[{"address": "a@example.com", "name": "A" + bad}]),
    "to[0].address": lambda ev, bad: ev.update(to=[{"address": bad + "a@example.com"}]),
    "to[0]": lambda ev, bad: ev.update(to=[bad + "a@example.com"]),
    "cc[0].name": lambda ev, bad: ev.update(cc=[{"address": "c@example.com", "name": bad}]),
    "cc[0]": lambda ev, bad: ev.update(cc=["c" + bad + "@example.com"]),
    "bcc[0].name": lambda ev, bad: ev.update(bcc=[{"address": "b@example.com", "name": bad}]),
    "bcc[0]": lambda ev, bad: ev.update(bcc=[bad + "@example.com"]),
    "reply_to[0].name": lambda ev, bad: ev.update(reply_to=[{"address": "r@example.com", "name": bad}]),
    "reply_to[0]": lambda ev, bad: ev.update(reply_to=[bad + "r@example.com"]),
    "headers.X-Ref": lambda ev, bad: ev.update(headers={"X-Ref": "v" + bad}),
    "record.id": lambda ev, bad: ev.update(record={"type": "ticket", "id": "1" + bad}),
}


def injected(field: str, bad: str) -> dict:
    ev = event(to=["user@example.com"])
    FIELDS[field](ev, bad)
    return ev


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_injection_form_is_refused_in_every_header_field(field: str):
    for bad in INJECTIONS:
        problems = schemas.validate(schemas.EVENT, injected(field, bad))
        assert field in {p.path for p in problems}, (field, bad, problems)


def raw_envelope(ev: dict) -> bytes:
    """The Dramatiq message a foreign publisher writes (\\u escapes carry even a lone surrogate)."""
    return json.dumps({"queue_name": Queue.ADMIT, "actor_name": Queue.ADMIT, "args": [ev], "kwargs": {},
                       "options": {}, "message_id": ev["event_id"], "message_timestamp": int(time.time() * 1000)},
                      ensure_ascii=True).encode()


POISON = ("\x00", "\ud800")


def test_invalid_generated_events_are_refused_by_the_publisher_and_rejected_at_admission(
        runtime, store, worker, publisher, utf8_peer):
    runtime.settings.save("alpha", smtp_settings(utf8_peer, security="none", auth="none"))
    worker()

    @PROPERTY_SETTINGS
    @given(st.sampled_from(sorted(FIELDS)), st.sampled_from(INJECTIONS))
    def one(field: str, bad: str) -> None:
        ev = injected(field, bad)
        with pytest.raises(InvalidEvent) as caught:
            publisher.publish(ev)
        assert field in {p.path for p in caught.value.problems}
        publisher.publish_raw(raw_envelope(ev), ev["event_id"], 1, Queue.ADMIT)
        mail = wait_until(lambda: store.get_mail(ev["event_id"]), timeout=10)
        assert mail.state == "rejected" and mail.reason == "invalid_event"
        assert f"{field}:" in mail.detail

    one()
    after = publisher.publish(event(to=["still@example.com"]))  # the worker goes on
    wait_until(lambda: (m := store.get_mail(after)) and m.state == "sent")
    assert all(b"evil@example.net" not in r.data for r in utf8_peer.messages)


@pytest.mark.parametrize("bad", POISON)
def test_poison_text_from_a_foreign_publisher_ends_rejected_with_the_field_named(runtime, store, worker, publisher,
                                                                                 bad: str):
    worker()
    ev = injected("subject", bad)
    publisher.publish_raw(raw_envelope(ev), ev["event_id"], 1, Queue.ADMIT)
    mail = wait_until(lambda: store.get_mail(ev["event_id"]), timeout=10)
    assert mail.state == "rejected" and "subject:" in mail.detail


def test_a_deeply_nested_event_from_a_foreign_publisher_ends_rejected_with_the_field_named(runtime, store, worker,
                                                                                         publisher):
    worker()
    nested: Any = []
    for _ in range(500):  # refused by depth alone, before any check that recurses (Dramatiq decodes up to ~1,000)
        nested = [nested]
    ev = event(extra=nested)
    publisher.publish_raw(raw_envelope(ev), ev["event_id"], 1, Queue.ADMIT)
    mail = wait_until(lambda: store.get_mail(ev["event_id"]), timeout=10)
    assert mail.state == "rejected" and mail.detail.startswith("extra[0]") and "nested more than" in mail.detail
