"""Validating against schemas with their local references inlined means the same as against the originals."""

from __future__ import annotations

import pytest

from deskmail.schemas.compiled import EVENT, SETTINGS, _FORMATS, _Validator, inlined, schema, validator


def errors(checker, payload) -> list[tuple[str, str]]:
    return sorted((error.json_path, error.message) for error in checker.iter_errors(payload))


BAD_EVENTS = [
    {},
    {"event_id": "nope", "project": "", "kind": "memo", "to": "x", "subject": 7, "text": None},
    {"event_id": "7d3c0a34-1f3e-4b55-9d5e-1f2a3b4c5d6e", "project": "alpha", "kind": "record",
     "to": [{"address": 5}], "cc": [""], "subject": "s" * 2000, "headers": {"X-A": 1}, "record": {"type": 2}},
]
BAD_SETTINGS = [
    {"mail_service": "smtp", "from_address": "d@example.org", "smtp": {"host": "", "port": 70000, "auth": "plain"}},
    {"mail_service": "exchange_oauth2", "from_address": "d@example.org",
     "exchange_oauth2": {"tenant_id": "t", "client_id": "c", "sender": "d@example.org",
                         "certificate": {"private_key": "k", "thumbprint": "xyz"}, "client_secret": "s"}},
]


@pytest.mark.parametrize("name, payloads", [(EVENT, BAD_EVENTS), (SETTINGS, BAD_SETTINGS)])
def test_inlined_schemas_report_exactly_the_errors_of_the_originals(name, payloads):
    original = _Validator(schema(name), format_checker=_FORMATS)
    for payload in payloads:
        assert errors(validator(name), payload) == errors(original, payload) != []


def test_a_reference_with_constraining_siblings_keeps_both_and_a_recursive_one_stays():
    document = {"$defs": {"short": {"type": "string", "maxLength": 3},
                          "tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/tree"}}}},
                "properties": {"a": {"$ref": "#/$defs/short", "maxLength": 2, "description": "d"},
                               "b": {"$ref": "#/$defs/short", "description": "d"},
                               "t": {"$ref": "#/$defs/tree"}}}
    out = inlined(document)["properties"]
    assert out["a"] == {"maxLength": 2, "description": "d", "allOf": [{"type": "string", "maxLength": 3}]}
    assert out["b"] == {"type": "string", "maxLength": 3, "description": "d"}
    assert out["t"]["properties"]["child"] == {"$ref": "#/$defs/tree"}
