"""The quick check proves an event valid only where the full validation (jsonschema and schemas.shape) agrees.

Generated events, valid ones in every field of v1.1 and the same events mutated (wrong types, missing and
extra fields, over-long texts and lists at each bound of the schema, header injection, NUL, lone surrogates,
bad base64, v1 events with v1.1 fields), are validated both ways: the quick check never says "valid" where
jsonschema or schemas.shape finds a problem, validate() reports exactly what validate_fully() reports, and the
plain valid events are the ones the quick check proves (else it would be right only by never answering).
"""

from __future__ import annotations

import base64
import copy
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deskmail import schemas
from deskmail.schemas.compiled import EVENT, EVENT_V1, schema, validator
from deskmail.schemas.mail_parts import decoded_size, is_base64
from deskmail.schemas.quick import NotProvable, _Compiler, compiled_check, quick_check
from deskmail.schemas.shape import carriable, shape_problems
from deskmail.schemas.validation import validate_fully

NAMES = (EVENT, EVENT_V1)
PROPERTIES = settings(max_examples=600, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def patterns(node: Any) -> set[str]:
    """Every pattern of a schema document (its messages left out)."""
    if isinstance(node, dict):
        own = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return own | {p for key, value in node.items() if key != "x-messages" for p in patterns(value)}
    return {p for value in node for p in patterns(value)} if isinstance(node, list) else set()


def bounds(node: Any, keywords: tuple[str, ...]) -> set[int]:
    """Every bound of the given keywords in a schema document, and its neighbours."""
    found: set[int] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keywords and isinstance(value, int):
                found |= {value - 1, value, value + 1}
            found |= bounds(value, keywords)
    elif isinstance(node, list):
        for value in node:
            found |= bounds(value, keywords)
    return {n for n in found if n >= 0}


def from_pattern(pattern: str) -> st.SearchStrategy[str]:
    """Texts the whole of which match a schema pattern."""
    return st.from_regex(pattern, fullmatch=True)


PATTERNS = sorted(patterns(schema(EVENT)))
LENGTHS = sorted(bounds(schema(EVENT), ("minLength", "maxLength")))
COUNTS = sorted(bounds(schema(EVENT), ("maxItems", "maxProperties")))
UUID = next(p for p in PATTERNS if "{12}" in p)
PROJECT = next(p for p in PATTERNS if "{0,63}" in p)
MESSAGE_ID = next(p for p in PATTERNS if p.startswith("^<"))
CONTENT_TYPE = next(p for p in PATTERNS if "/[A-Za-z0-9]" in p)
CONTENT_ID = next(p for p in PATTERNS if p.endswith(")?$"))
HEADER_NAME = next(p for p in PATTERNS if p.startswith("^X-"))

HEADER_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
ANY_TEXT = st.text(max_size=20)  # surrogates, controls and line breaks included
TEXT = st.one_of(HEADER_TEXT, HEADER_TEXT, ANY_TEXT)
LOCAL = st.text(st.sampled_from("abcXYZ019.-_+'!#$ü日"), min_size=1, max_size=10)
DOMAIN = st.sampled_from(["example.com", "Example.ORG", "bücher.ch", "xn--bcher-kva.ch", "localhost", "a..b", "x"])
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN) | st.sampled_from(["", "@", "a@"])
RECIPIENT = ADDRESS | st.fixed_dictionaries({"address": ADDRESS}, optional={"name": TEXT})
BASE64 = st.binary(max_size=40).map(lambda data: base64.b64encode(data).decode())
ATTACHMENT = st.fixed_dictionaries(
    {"filename": TEXT, "content_type": from_pattern(CONTENT_TYPE) | TEXT, "content": BASE64 | TEXT},
    optional={"content_id": from_pattern(CONTENT_ID), "inline": st.booleans()})
DATE_TIME = st.sampled_from(["2025-01-31T09:30:00Z", "2025-02-30T09:30:00Z", "2025-01-31T09:30:00.123+01:00",
                             "2025-01-31 09:30:00Z", "2025-01-31T24:00:00Z", "2025-01-31T09:30:00+24:00"])
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "to": st.lists(RECIPIENT, max_size=3), "cc": st.lists(RECIPIENT, max_size=2),
    "bcc": st.lists(RECIPIENT, max_size=2), "reply_to": st.lists(RECIPIENT, max_size=2),
    "text": st.text(max_size=50), "html": st.text(max_size=50),
    "headers": st.dictionaries(from_pattern(HEADER_NAME) | TEXT, TEXT, max_size=3),
    "record": st.fixed_dictionaries({"type": TEXT, "id": TEXT}),
    "created_at": DATE_TIME, "from_name": TEXT, "in_reply_to": from_pattern(MESSAGE_ID),
    "references": st.lists(from_pattern(MESSAGE_ID), max_size=3), "attachments": st.lists(ATTACHMENT, max_size=2),
}


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """An event with the required fields and any of the others, most of them valid."""
    event: dict[str, Any] = {
        "event_id": draw(st.just(str(uuid.uuid4())) | from_pattern(UUID)), "project": draw(from_pattern(PROJECT)),
        "kind": draw(st.sampled_from(["notification", "record"])), "subject": draw(HEADER_TEXT),
        "to": [draw(st.sampled_from(["alice@example.com", "Bob@Example.ORG"]))],
    }
    for field in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), unique=True, max_size=6)):
        event[field] = draw(OPTIONAL[field])
    if "text" not in event and "html" not in event:
        event["text"] = "Hello"
    return event


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside a payload, the payload's own () first."""
    found = [path]
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found += paths(child, (*path, key))
    return found


class Text(str):
    """A str subclass: jsonschema takes it as a string; the quick check cannot tell."""


WRONG: list[Any] = [None, 0, 1, -1, 2.5, float("nan"), True, False, "", "x", "true", [], ["x"], {}, {"x": 1}, ("x",),
                    Text("x"), b"x", {"address": "a@example.com", "extra": 1}]
BREAKS = ["\r\n", "\n", "\r", "\x00", "\ud800", "\udfff", "\x0b", "\x1b", "\x7f", "\x85", "\u2028", "=?utf-8?q?x?=",
          "\t", " ", "$", "/", "\\", "@", "<", ">", "[", "]", "é", "日"]


def mutation(draw: Any, event: dict[str, Any]) -> None:
    """One change to the event: to one of its objects or lists (the event itself among them), or to a value."""
    everywhere = paths(event)
    containers = [path for path in everywhere if isinstance(lookup(event, path), (dict, list))]
    kind = draw(st.sampled_from(["drop", "add", "grow", "wrong", "text", "break", "length", "newline"]))
    strings = [path for path in everywhere if isinstance(lookup(event, path), str)]
    chosen = containers if kind in ("drop", "add", "grow") else strings if kind in ("break", "length", "newline") \
        else everywhere[1:]
    if not chosen:
        return
    path = draw(st.sampled_from(chosen))
    target = lookup(event, path)
    if kind == "drop" and target:
        del target[draw(st.sampled_from(sorted(target, key=repr) if isinstance(target, dict) else range(len(target))))]
    elif kind in ("add", "grow") and isinstance(target, list):
        count = draw(st.sampled_from(COUNTS)) if kind == "grow" else 1
        target.extend([copy.deepcopy(target[0]) if target else "a@example.com"] * count)
    elif kind == "add" and isinstance(target, dict):
        key = draw(st.sampled_from(["extra", "attachments", "from_name", "in_reply_to", "name", "content_id",
                                    "X-Extra", "x-deskmail-id", "X-A\n", "X-\x00", 7, ("X", "Y"), Text("to")]))
        target[key] = draw(st.sampled_from(["v", "<a@b>", [], {}, None]))
    elif kind == "grow" and isinstance(target, dict):
        for index in range(draw(st.sampled_from(COUNTS))):
            target[f"X-H{index}"] = "v"
    elif kind in ("wrong", "text", "break", "length", "newline"):
        lookup(event, path[:-1])[path[-1]] = changed(draw, kind, target)


def lookup(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def changed(draw: Any, kind: str, value: Any) -> Any:
    """A value put in place of another: of a wrong type, any text, or the text broken, resized or extended."""
    if kind == "wrong":
        return copy.deepcopy(draw(st.sampled_from(WRONG)))
    if kind == "text":
        return draw(ANY_TEXT)
    if kind == "break":
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.sampled_from(BREAKS)) + value[at:]
    if kind == "length":
        length = draw(st.sampled_from(LENGTHS))
        return ((value or "a") * (length + 1))[:length]
    return value + "\n"


@st.composite
def mutated(draw: Any) -> dict[str, Any]:
    """A generated event with one to three changes."""
    event = draw(events())
    for _ in range(draw(st.integers(1, 3))):
        mutation(draw, event)
    return event


def schema_and_shape_problems(name: str, payload: Any) -> list[str]:
    """What jsonschema and schemas.shape find; the quick check must never prove a payload that has any."""
    shape = shape_problems(payload)
    if shape:
        return [str(problem) for problem in shape]
    return [error.message for error in validator(name).iter_errors(payload)]


def assert_agrees(payload: Any) -> None:
    for name in NAMES:
        if quick_check(name)(payload):
            assert schema_and_shape_problems(name, payload) == [], (name, payload)
        assert schemas.validate(name, payload) == validate_fully(name, payload), (name, payload)


@PROPERTIES
@given(events())
def test_generated_events_get_the_same_verdict_and_problems_both_ways(event: dict[str, Any]) -> None:
    assert_agrees(event)


@PROPERTIES
@given(mutated())
def test_mutated_events_get_the_same_verdict_and_problems_both_ways(event: dict[str, Any]) -> None:
    assert_agrees(event)


@PROPERTIES
@given(events())
def test_every_plain_event_the_schema_accepts_is_proven_by_the_quick_check(event: dict[str, Any]) -> None:
    for name in NAMES:
        assert quick_check(name)(event) == (schema_and_shape_problems(name, event) == []), name


FULL_EVENT: dict[str, Any] = {
    "event_id": "0b7c6f0e-3d55-4d3a-9a43-1f4a9c1e2b7d", "project": "help.desk_1", "kind": "record",
    "to": ["alice@example.com", {"address": "bob@bücher.ch", "name": "Bob"}], "cc": [{"address": "c@example.com"}],
    "bcc": ["d@example.com"], "reply_to": [{"address": "r@example.com", "name": "Desk"}], "subject": "Re: [#1] Hi",
    "text": "Hello", "html": "<p>Hello</p>", "headers": {"X-Ticket": "1", "X-Queue-Name": "first line"},
    "record": {"type": "ticket", "id": "1"}, "created_at": "2025-01-31T09:30:00.123+01:00",
    "from_name": "Alice via Desk", "in_reply_to": "<CAF.1$x@mail.example.com>",
    "references": ["<root@[127.0.0.1]>", "<CAF.1$x@mail.example.com>"],
    "attachments": [{"filename": "a.pdf", "content_type": "application/pdf", "content": "JVBERi0=",
                     "content_id": "logo@desk", "inline": False},
                    {"filename": "b.txt", "content_type": "text/plain", "content": ""}],
}


def single_changes(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The event changed once at every place: every value given every wrong type, every text broken in every way
    and given every length the schema bounds, every member dropped, every object given an extra key."""
    out = []
    for path in paths(event):
        target = lookup(event, path)
        replacements = [*WRONG] if path else []
        if isinstance(target, str):
            replacements += [target + bad for bad in BREAKS] + [bad + target for bad in BREAKS] + [target + "\n"]
            replacements += [((target or "a") * (length + 1))[:length] for length in LENGTHS]
        for replacement in replacements:
            copied = copy.deepcopy(event)
            lookup(copied, path[:-1])[path[-1]] = copy.deepcopy(replacement)
            out.append(copied)
        members = list(target) if isinstance(target, dict) else range(len(target)) if isinstance(target, list) else []
        for member in members:
            copied = copy.deepcopy(event)
            del lookup(copied, path)[member]
            out.append(copied)
        if isinstance(target, dict):
            for key in ("extra", "X-Extra", 7, "\x00"):
                copied = copy.deepcopy(event)
                lookup(copied, path)[key] = "v"
                out.append(copied)
    return out


def test_every_single_change_to_an_event_with_every_field_gets_the_same_verdict_both_ways() -> None:
    assert quick_check(EVENT)(FULL_EVENT) and not quick_check(EVENT_V1)(FULL_EVENT)
    changes = single_changes(FULL_EVENT)
    assert len(changes) > 2000
    for changed_event in changes:
        assert_agrees(changed_event)


@pytest.mark.parametrize("message_id, valid", [
    ("<a$b@host>", True), ("<$@[1.2.3.4]>", True), ("<a@b>", True), ("<a@b>\n", False), ("<a@b>$", False),
    ("<a@[x$]>", True), ("<a@[x\\y]>", False), ("<a@[x\n]>", False),
])
def test_a_dollar_inside_a_character_class_is_a_character_and_a_final_newline_is_refused(message_id: str,
                                                                                         valid: bool) -> None:
    event = {"event_id": str(uuid.uuid4()), "project": "p", "kind": "record", "to": ["a@example.com"],
             "subject": "s", "text": "t", "in_reply_to": message_id, "references": [message_id]}
    assert quick_check(EVENT)(event) is valid
    assert (schemas.validate(EVENT, event) == []) is valid
    assert_agrees(event)


def test_the_quick_check_leaves_to_the_full_validation_what_only_it_can_tell() -> None:
    event = {"event_id": str(uuid.uuid4()), "project": "p", "kind": "notification", "to": ["a@example.com"],
             "subject": "s", "text": "t"}
    assert quick_check(EVENT)(event)
    for changed in ({**event, "to": ("a@example.com",)}, {**event, "subject": Text("s")},
                    {**event, "headers": {1: "x"}}, {**event, "extra": [[[]]]}, {**event, "text": "\x00"}):
        assert not quick_check(EVENT)(changed)
        assert_agrees(changed)


@pytest.mark.parametrize("document, why", [
    ({"type": "object", "additionalProperties": False, "properties": {"n": {"type": "integer"}}}, "type"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, "additional properties"),
    ({"type": "object", "additionalProperties": {"description": "anything"}}, "any type"),
    ({"type": "array"}, "items"),
    ({"type": "object", "additionalProperties": False, "properties": {"a": {"$ref": "#/$defs/a"}}}, "\\$ref"),
])
def test_a_schema_the_quick_check_cannot_prove_exactly_is_refused(document: dict[str, Any], why: str) -> None:
    full = validator(EVENT)
    with pytest.raises(NotProvable, match=why):
        _Compiler(frozenset(full.VALIDATORS), full.format_checker).node(document, 0, member=True)


def nested(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        document = {"type": "array", "items": document}
    return document


def test_both_event_schemas_compile_and_a_schema_that_does_not_is_left_to_the_full_validation() -> None:
    for name in NAMES:
        assert compiled_check(name)
    settings = {"mail_service": "smtp", "from_address": "desk@example.com",
                "smtp": {"host": "mail.example.com", "port": 587, "username": "desk", "password": "s3cret"}}
    with pytest.raises(NotProvable):
        compiled_check(schemas.SETTINGS)
    assert not quick_check(schemas.SETTINGS)(settings) and schemas.validate(schemas.SETTINGS, settings) == []


def test_a_schema_nested_past_the_shape_limit_is_refused() -> None:
    full = validator(EVENT)
    compiler = _Compiler(frozenset(full.VALIDATORS), full.format_checker)
    assert compiler.node(nested(32), 0, member=True)
    with pytest.raises(NotProvable, match="nested"):
        compiler.node(nested(33), 0, member=True)


# --- any schema the compiler takes, not only the events' --------------------------------------------------

SYNTHETIC: list[dict[str, Any]] = [
    {"type": "object", "additionalProperties": {"type": ["string", "boolean"], "minLength": 1}, "minProperties": 1},
    {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "array", "items": {"enum": ["a", "b"]}}},
    {"type": ["object", "string"], "maxLength": 3, "propertyNames": {"maxLength": 2}, "maxProperties": 2,
     "additionalProperties": {"type": "string", "format": "date-time"}},
    {"type": "object", "additionalProperties": False, "required": ["a"],
     "properties": {"a": {"type": "string", "pattern": "^[a$]+$"}, "b": {"type": "boolean"}},
     "allOf": [{"required": ["b"]}, {"properties": {"a": {"minLength": 2}}}], "anyOf": [{"maxProperties": 1}, {}]},
]
KEYS = st.text(max_size=3) | st.sampled_from(["a", "b", "\x00", "\ud800"]) | st.integers(0, 2) | \
    st.builds(Text, st.text(max_size=2))
LEAVES = st.none() | st.booleans() | st.integers(-1, 1) | st.floats() | st.text(max_size=4) | \
    st.sampled_from(["a", "ab", "aa$", "aa\n", "2025-01-31T09:30:00Z", "2025-13-31T09:30:00Z"]) | \
    st.builds(Text, st.text(max_size=3))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=2).map(tuple) |
                      st.dictionaries(KEYS, inner, max_size=3), max_leaves=12)


@PROPERTIES
@given(st.sampled_from(range(len(SYNTHETIC))), VALUES)
@example(0, {"\x00": "x"})
@example(0, {"\ud800": True})
@example(3, {"a": "aa", "b": "true"})
def test_the_compiler_proves_nothing_that_jsonschema_or_shape_refuses_in_any_schema_it_takes(index: int,
                                                                                           value: Any) -> None:
    full = validator(EVENT)
    document = SYNTHETIC[index]
    check = _Compiler(frozenset(full.VALIDATORS), full.format_checker).node(document, 0, member=True)
    if check(value):
        assert shape_problems(value) == []
        assert [e.message for e in type(full)(document, format_checker=full.format_checker).iter_errors(value)] == []


def test_the_synthetic_schemas_each_prove_a_valid_value() -> None:
    full = validator(EVENT)
    compiler = _Compiler(frozenset(full.VALIDATORS), full.format_checker)
    valid = [{"x": True}, [["a"], []], {"k": "2025-01-31T09:30:00Z"}, {"a": "a$", "b": False}]
    assert [compiler.node(document, 0, member=True)(value) for document, value in zip(SYNTHETIC, valid)] == \
        [True] * len(SYNTHETIC)


# --- the quicker forms of the semantic checks mean the same as the patterns they replace ------------------

B64_TEXT = st.text(st.sampled_from("AZaz09+/=\n -_é\x00"), max_size=16)


@settings(max_examples=2000, database=None, derandomize=True)
@given(B64_TEXT | BASE64)
def test_is_base64_is_the_padded_base64_pattern(text: str) -> None:
    assert is_base64(text) == bool(len(text) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text))
    assert decoded_size(text) == len(text) * 3 // 4 - (len(text) - len(text.rstrip("=")))
    if is_base64(text):
        assert decoded_size(text) == len(base64.b64decode(text, validate=True))


@settings(max_examples=1000, database=None, derandomize=True)
@given(st.text(st.sampled_from("a\x00\ud800\udbff\udc00\udfffé日\U0001f600"), max_size=6) | st.text())
def test_carriable_text_is_what_shape_accepts(text: str) -> None:
    assert carriable(text) == (shape_problems(text) == [])


def test_property_generators_reach_what_they_claim() -> None:
    """The strategies above draw from the schema's own patterns and bounds; a schema change that empties them
    would leave the properties testing little."""
    assert any("$%&" in pattern for pattern in PATTERNS)  # a $ inside a character class
    assert {320, 321, 998, 999} <= set(LENGTHS) and {20, 21, 1000, 1001} <= set(COUNTS)
