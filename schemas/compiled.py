"""Schema documents loaded once, and their validators compiled once."""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

EVENT = "notification-event.v1.1"  # the current contract; v1 events are valid v1.1 events
EVENT_V1 = "notification-event.v1"
CONTROL = "control-message.v1"
SETTINGS = "project-settings.v1"
SCHEMA_NAMES: tuple[str, ...] = (EVENT, EVENT_V1, CONTROL, SETTINGS)

_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f<>\"{}|\\^`]")


def load_schema(name: str) -> dict[str, Any]:
    """A copy of the schema document `name` (e.g. "notification-event.v1")."""
    return copy.deepcopy(schema(name))


@lru_cache(maxsize=None)
def schema(name: str) -> dict[str, Any]:
    """The shared, cached schema document; callers must not change it."""
    if name not in SCHEMA_NAMES:
        raise LookupError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__package__).joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    """The compiled validator of schema `name`, built on first use."""
    document = schema(name)
    _Validator.check_schema(document)
    return _Validator(inlined(document), format_checker=_FORMATS)


_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated", "x-secret"})


def inlined(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every local `#/$defs/NAME` reference replaced by what it points at.

    Validation then never resolves a reference: it is the hot path of admission (each event is
    validated by its publisher and again by the worker), and reference lookups cost a third of it.
    A reference whose siblings constrain the same keywords is kept as an `allOf`, so the meaning
    is the same; a recursive reference is left as it is.
    """
    defs = document.get("$defs", {})

    def inline(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        name = ref[len("#/$defs/"):] if isinstance(ref, str) and ref.startswith("#/$defs/") else None
        if name is None or "/" in name or name not in defs or name in stack:
            return {key: inline(value, stack) for key, value in node.items()}
        target = inline(defs[name], (*stack, name))
        siblings = {key: inline(value, stack) for key, value in node.items() if key != "$ref"}
        if (set(siblings) & set(target)) - _ANNOTATIONS:
            return {**siblings, "allOf": [*siblings.get("allOf", []), target]}
        return {**target, **siblings}

    return inline(document, ())


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`pattern` with ECMA-262 semantics, as publishers in other languages read it."""
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"does not match {pattern}")


@lru_cache(maxsize=256)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compiles a schema pattern so that `$` means end of text, never "before a final newline"."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "[]":
            in_class = char == "["
        elif char == "$" and not in_class:
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out), re.ASCII)


def _is_integer(checker: Any, instance: Any) -> bool:
    """Integers only: 587.0 and true are not ports."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker: Any, instance: Any) -> bool:
    """Finite numbers only: NaN passes every minimum and maximum."""
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time with an offset, and a real calendar date and time."""
    if not isinstance(value, str):
        return True
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, off_hours, off_minutes = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59))
    except ValueError:
        return False
    return int(off_hours or 0) <= 23 and int(off_minutes or 0) <= 59


@_FORMATS.checks("uri", raises=ValueError)
def _is_uri(value: object) -> bool:
    """An absolute URI without spaces or control characters; http(s) ones need a host (ValueError: invalid)."""
    if not isinstance(value, str):
        return True
    scheme, _, rest = value.partition(":")
    if not rest or not _SCHEME.fullmatch(scheme) or _URI_FORBIDDEN.search(value):
        return False
    return scheme.lower() not in ("http", "https") or bool(urlsplit(value).hostname)


_TYPES = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
_Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern}, type_checker=_TYPES)
