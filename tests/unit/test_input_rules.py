"""Input that cannot travel is refused where it enters, with the field named: poison text, deep nesting,
encoded words and control characters in every header a caller can influence, addresses included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deskmail import schemas
from deskmail.producers.publisher import InvalidEvent, Publisher, publish_lines
from deskmail.schemas.header_text import ENCODED_WORD, LINE_BREAK
from deskmail.schemas.shape import MAX_DEPTH, TOO_DEEP
from tests.unit.test_schemas import CONTROL, EVENT, SETTINGS, at, control, event, found, settings

NUL = "the text contains U+0000 (NUL, which PostgreSQL and mail cannot carry)"
SURROGATE = "the text contains U+D800 (a lone surrogate, which is not Unicode text and has no UTF-8 form)"


def deep(levels: int) -> Any:
    """`levels` nested lists, built without recursion."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


# --- poison text -------------------------------------------------------------------

@pytest.mark.parametrize("changes, path", [
    ({"text": "Hello\x00world"}, "text"),
    ({"html": "<p>\x00</p>"}, "html"),
    ({"subject": "Hi\x00"}, "subject"),
    ({"headers": {"X-Ref": "a\x00"}}, "headers.X-Ref"),
    ({"record": {"type": "ticket", "id": "4\x002"}}, "record.id"),
    ({"to": [{"address": "a@example.com", "name": "A\x00"}]}, "to[0].name"),
    ({"cc": ["a\x00b@example.com"]}, "cc[0]"),
    ({"created_at": "2025-01-31T09:30:00Z\x00"}, "created_at"),
])
def test_nul_in_any_string_of_an_event_is_refused_at_its_field(changes: dict, path: str) -> None:
    assert NUL in at(EVENT, event(**changes), path)


@pytest.mark.parametrize("changes, path", [
    ({"text": "Hello \ud800"}, "text"),
    ({"subject": "\udfff"}, "subject"),
    ({"to": [{"address": "a@example.com", "name": "\ud800"}]}, "to[0].name"),
    ({"headers": {"X-Ref": "\udc80"}}, "headers.X-Ref"),
])
def test_lone_surrogate_in_an_event_is_refused_at_its_field(changes: dict, path: str) -> None:
    messages = at(EVENT, event(**changes), path)
    assert any("lone surrogate" in message for message in messages), messages


def test_poison_in_a_key_name_is_refused_with_the_key_shown_escaped() -> None:
    problems = found(EVENT, event(**{"x\x00y": 1}))
    assert ("x\\x00y", "its name contains U+0000 (NUL, which PostgreSQL and mail cannot carry)") in problems


def test_poison_is_refused_in_control_messages_and_settings_too() -> None:
    assert NUL in at(CONTROL, control(action="project.pause", project="a", requested_by="ad\x00min"), "requested_by")
    broken = settings(smtp={"host": "mail.example.com", "port": 587, "username": "desk", "password": "s\ud800"})
    assert SURROGATE in at(SETTINGS, broken, "smtp.password")


def test_normalize_event_raises_invalid_payload_for_poison_text() -> None:
    with pytest.raises(schemas.InvalidPayload) as caught:
        schemas.normalize_event(event(text="a\x00"))
    assert "text: the text contains U+0000" in str(caught.value)


@pytest.mark.parametrize("name, payload", [
    (EVENT, event(extra=deep(100_000))),
    (CONTROL, control(action=deep(100_000))),
    (SETTINGS, settings(smtp=deep(100_000))),
])
def test_a_hundred_thousand_nested_brackets_are_refused_with_the_field_named(name: str, payload: dict) -> None:
    [problem] = schemas.validate(name, payload)
    assert problem.message == TOO_DEEP
    assert problem.path.split("[")[0] in ("extra", "action", "smtp")


def test_deep_tuples_and_keys_that_are_not_strings_are_refused_too() -> None:
    nested: Any = ()
    for _ in range(100_000):
        nested = (nested,)
    assert found(EVENT, event(extra=nested))[0][1] == TOO_DEEP
    assert ("headers", "has a key that is not a string") in found(EVENT, event(headers={("X", "Y"): "v"}))


def test_at_most_ten_uncarriable_strings_are_reported() -> None:
    from deskmail.schemas.shape import shape_problems
    assert len(shape_problems(event(headers={f"X-{i}": "\x00" for i in range(1000)}))) == 10


def test_nesting_below_the_limit_is_only_checked_by_the_schema() -> None:
    assert TOO_DEEP not in [m for _, m in found(EVENT, event(extra=deep(MAX_DEPTH - 2)))]


# --- the publisher reports bad events, never a traceback -------------------------------

@pytest.fixture
def unconnected_publisher():
    """A publisher whose broker does not exist: a refused event never gets as far as connecting."""
    publisher = Publisher("amqp://guest:guest@127.0.0.1:1//", timeout=1)
    yield publisher
    publisher.close()


def test_publish_refuses_a_lone_surrogate_as_an_invalid_event(unconnected_publisher) -> None:
    with pytest.raises(InvalidEvent) as caught:
        unconnected_publisher.publish(event(text="\ud800"))
    assert [p.path for p in caught.value.problems] == ["text"]


def test_publish_refuses_deep_nesting_and_what_is_not_an_object(unconnected_publisher) -> None:
    with pytest.raises(InvalidEvent, match="extra"):
        unconnected_publisher.publish(event(extra=deep(100_000)))
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        unconnected_publisher.publish(["not", "an", "event"])  # type: ignore[arg-type]


def test_publish_many_names_the_bad_event_by_index(unconnected_publisher) -> None:
    with pytest.raises(InvalidEvent) as caught:
        unconnected_publisher.publish_many([event(), event(subject="\udc00"), event(text="\x00")])
    assert [p.path for p in caught.value.problems] == ["events[1].subject"]
    with pytest.raises(InvalidEvent) as caught:
        unconnected_publisher.publish_many([event(), "not an event"])  # type: ignore[list-item]
    assert [p.path for p in caught.value.problems] == ["events[1]"]


def test_publish_lines_reports_each_bad_line_and_goes_on(unconnected_publisher) -> None:
    lines = ["[" * 100_000 + "]" * 100_000, json.dumps(event(text="\ud800")), json.dumps(event(text="a\x00")),
             '{"a": ' * 100_000, '{"subject": 1' + "1" * 5000 + "}"]
    results = list(publish_lines(unconnected_publisher, lines))
    assert [(number, event_id) for number, event_id, _ in results] == [(n, None) for n in range(1, 6)]
    errors = [error for _, _, error in results]
    assert "nested too deeply" in errors[0] and errors[1].startswith("text:") and errors[2].startswith("text:")
    assert "nested too deeply" in errors[3] or "not valid JSON" in errors[3]
    assert errors[4].startswith("(line): not usable JSON")


# --- one header-text rule, every RFC 2047 form -------------------------------------

ENCODED_FORMS = [
    "=?utf-8?q?hi?x=0D=0ABcc:_evil@x.com?=",     # `?` inside the encoded text
    "=?UTF-8?Q?hi=0D=0ABcc:_evil@x.com?=",
    "=?utf-8?b?aGkNCkJjYzogZXZpbEB4LmNvbQ==?=",
    "=?iso-8859-1?B?aGkNCg==?=",
    "=?utf-8*en?q?hi?=",                          # RFC 2231 language
    "=?x-unknown?Q?hi",                           # no closing ?=, which some decoders accept
    "Re: =?Utf-8?q?=00?= done",
]


@pytest.mark.parametrize("text", ENCODED_FORMS)
def test_every_encoded_word_form_is_refused_in_every_header_field(text: str) -> None:
    payload = event(subject=text, headers={"X-Ref": text}, record={"type": "ticket", "id": text},
                    to=[{"address": "a@example.com", "name": text}], cc=[{"address": "c@example.com", "name": text}],
                    bcc=[{"address": "b@example.com", "name": text}],
                    reply_to=[{"address": "r@example.com", "name": text}])
    for path in ("subject", "headers.X-Ref", "record.id", "to[0].name", "cc[0].name", "bcc[0].name",
                 "reply_to[0].name"):
        assert ENCODED_WORD in at(EVENT, payload, path), path


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to"])
def test_an_encoded_word_in_a_local_part_is_refused_in_both_recipient_forms(field: str) -> None:
    local = "=?utf-8?q?a=0D=0ABcc:_x@evil.example?=@example.com"
    assert at(EVENT, event(**{field: [local]}), f"{field}[0]") == [ENCODED_WORD]
    assert at(EVENT, event(**{field: [{"address": local}]}), f"{field}[0].address") == [ENCODED_WORD]


def test_settings_addresses_and_from_name_follow_the_same_rule() -> None:
    bad = settings(from_address="=?utf-8?b?YQ==?=@example.com", from_name="=?utf-8?q?x?=",
                   reply_to="=?utf-8?Q?r?=@example.com")
    assert {path for path, message in found(SETTINGS, bad) if message == ENCODED_WORD} == {
        "from_address", "from_name", "reply_to"}


@pytest.mark.parametrize("char", ["\r", "\n", "\u2028", "\u2029", "\x85"])
def test_line_breaks_in_addresses_and_names_are_refused(char: str) -> None:
    payload = event(to=[{"address": f"a{char}b@example.com", "name": f"A{char}B"}])
    assert at(EVENT, payload, "to[0].address") == [LINE_BREAK]
    assert at(EVENT, payload, "to[0].name") == [LINE_BREAK]


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f", "\x9b"])
def test_other_control_characters_are_refused_in_names_and_addresses(char: str) -> None:
    payload = event(to=[{"address": f"a{char}b@example.com", "name": f"A{char}B"}], subject=f"s{char}")
    for path in ("to[0].address", "to[0].name", "subject"):
        assert any(f"U+{ord(char):04X}" in m for m in at(EVENT, payload, path)), path


def test_a_tab_is_allowed_in_a_name_but_not_in_an_address() -> None:
    assert at(EVENT, event(to=[{"address": "a@example.com", "name": "A\tB"}]), "to[0].name") == []
    assert at(EVENT, event(to=["a\tb@example.com"]), "to[0]") == [
        "contains the control character U+0009; header text must be printable"]


def test_punycode_addresses_are_kept_as_given_and_unicode_ones_too() -> None:
    normalized = schemas.normalize_event(event(to=["a@XN--BCHER-KVA.ch", "b@bücher.ch"]))
    assert [r["address"] for r in normalized["to"]] == ["a@xn--bcher-kva.ch", "b@bücher.ch"]


def test_a_domain_given_in_unicode_and_in_punycode_counts_once() -> None:
    assert schemas.unique_recipients(event(to=["a@bücher.ch", "A@xn--bcher-kva.ch"])) == ["a@bücher.ch"]
