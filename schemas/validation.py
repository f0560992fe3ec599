"""Validate payloads against deskmail's schemas, reporting every problem with its field path."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from deskmail.schemas.compiled import (
    CONTROL, EVENT, EVENT_V1, SCHEMA_NAMES, SETTINGS, load_schema, schema, validator,
)
from deskmail.schemas.messages import problems_from
from deskmail.schemas.problems import InvalidPayload, Problem, sort_key
from deskmail.schemas.quick import quick_check
from deskmail.schemas.recipients import RECIPIENT_FIELDS, normalized_recipient, unique_recipients
from deskmail.schemas.semantics import semantic_problems
from deskmail.schemas.shape import FATAL, shape_problems

QUICK = (EVENT, EVENT_V1)  # the hot path; settings and control messages are rare, and use numbers

__all__ = [
    "CONTROL", "EVENT", "SCHEMA_NAMES", "SETTINGS", "InvalidPayload", "Problem", "load_schema",
    "normalize_event", "secret_paths", "unique_recipients", "validate",
]


def validate(name: str, payload: Any) -> list[Problem]:
    """Every problem of `payload` against schema `name`, sorted by path; empty when valid."""
    if name in QUICK and quick_check(name)(payload):  # the schema and shape hold: only the semantics to check
        return sorted(semantic_problems(name, payload), key=sort_key)
    return validate_fully(name, payload)


def validate_fully(name: str, payload: Any) -> list[Problem]:
    """What validate finds, always through jsonschema (the quick check is proven against it)."""
    shape = shape_problems(payload)
    if any(problem.message in FATAL for problem in shape):
        return sorted(shape, key=sort_key)  # the schema's own checks recurse, and read keys as text
    problems = shape + [problem for error in validator(name).iter_errors(payload)
                for problem in problems_from(error)]
    problems += semantic_problems(name, payload)
    return sorted(problems, key=sort_key)


def normalize_event(payload: dict[str, Any]) -> dict[str, Any]:
    """A validated copy of an event whose recipients are {"address": normalised, "name": ...} objects."""
    problems = validate(EVENT, payload)
    if problems:
        raise InvalidPayload(problems)
    event = _copied(payload)
    for field in RECIPIENT_FIELDS:
        if field in event:
            event[field] = [normalized_recipient(recipient) for recipient in event[field]]
    return event


def _copied(value: Any) -> Any:
    """A copy of a valid event's objects and lists; its strings and booleans, immutable, are shared."""
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


@lru_cache(maxsize=None)
def secret_paths(name: str = SETTINGS) -> tuple[tuple[str, ...], ...]:
    """Paths of every property marked `x-secret` in schema `name`, e.g. ("smtp", "password")."""
    document = schema(name)
    return tuple(_secret_paths(document, document, ()))


def _secret_paths(root: dict[str, Any], node: dict[str, Any], path: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Walks `properties` (following local `$ref`s); a secret's insides are not walked."""
    found = []
    for key, child in _resolved(root, node).get("properties", {}).items():
        if child.get("x-secret"):
            found.append((*path, key))
        else:
            found += _secret_paths(root, child, (*path, key))
    return found


def _resolved(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The schema a local `$ref` (`#/$defs/...`) points at, or the node itself."""
    ref = node.get("$ref", "")
    if not ref.startswith("#/"):
        return node
    target = root
    for part in ref[2:].split("/"):
        target = target[part]
    return target
