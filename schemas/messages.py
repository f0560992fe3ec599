"""jsonschema's errors in deskmail's words: the path of the field at fault and a short message."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

from jsonschema import ValidationError

from deskmail.schemas.problems import Problem, format_path

_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "object": "an object", "array": "a list", "null": "null",
}
_FORMAT_MESSAGES = {
    "date-time": "must be an RFC 3339 date-time with offset, e.g. 2025-01-31T09:30:00Z",
    "uri": "must be an absolute URL, e.g. https://host.example.com/path",
}


def problems_from(error: ValidationError) -> list[Problem]:
    """One error becomes one problem, or one per field for `required` and `additionalProperties`."""
    parts = list(error.absolute_path)
    if "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
        parts.append(error.instance)
    custom = _custom_message(error)
    if error.validator == "required":
        return [Problem(format_path([*parts, name]), custom or "is required") for name in _missing(error)]
    if error.validator == "additionalProperties":
        return [Problem(format_path([*parts, name]), "is not allowed") for name in _extras(error)]
    return [Problem(format_path(parts), custom or _message(error))]


def _schema(error: ValidationError) -> Mapping[str, Any]:
    """The subschema the error is about (empty for a boolean schema)."""
    return error.schema if isinstance(error.schema, Mapping) else {}


def _custom_message(error: ValidationError) -> str | None:
    """The schema's own wording for this keyword (`x-messages`), if it has one."""
    return _schema(error).get("x-messages", {}).get(error.validator)


def _missing(error: ValidationError) -> list[str]:
    """The required property this error is about (jsonschema reports one per error)."""
    required, instance = error.validator_value, error.instance
    if not isinstance(required, list) or not isinstance(instance, Mapping):
        return []  # not a `required` error of an object
    absent = [name for name in required if name not in instance]
    return [name for name in absent if error.message.startswith(repr(name))][:1] or absent[:1]


def _extras(error: ValidationError) -> list[str]:
    """Every property of the instance that the schema neither names nor matches by pattern."""
    if not isinstance(error.instance, Mapping):
        return []  # not an `additionalProperties` error of an object
    known = _schema(error).get("properties", {})
    patterns = _schema(error).get("patternProperties", {})
    return [name for name in error.instance
            if name not in known and not any(re.search(p, name) for p in patterns)]


def _message(error: ValidationError) -> str:
    """A short message for any other keyword; never jsonschema's own, which quotes the value (maybe a secret)."""
    build = _BUILDERS.get(str(error.validator))
    return build(error.validator_value) if build else f"breaks the schema rule {error.validator}"


def _types(expected: str | list[str]) -> str:
    """"must be a string or an object"."""
    names = [expected] if isinstance(expected, str) else expected
    return "must be " + " or ".join(_TYPE_NAMES.get(name, name) for name in names)


def _show(value: Any) -> str:
    """A schema value as a person reads it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


_BUILDERS: dict[str, Callable[[Any], str]] = {
    "type": _types,
    "enum": lambda values: "must be one of: " + ", ".join(_show(v) for v in values),
    "const": lambda value: f"must be {_show(value)}",
    "format": lambda name: _FORMAT_MESSAGES.get(name, f"must be a valid {name}"),
    "pattern": lambda pattern: f"must match the pattern {pattern}",
    "minLength": lambda n: "must not be empty" if n == 1 else f"must be at least {n} characters",
    "maxLength": lambda n: f"must be at most {n} characters",
    "minItems": lambda n: f"must have at least {n} items",
    "maxItems": lambda n: f"must have at most {n} items",
    "uniqueItems": lambda _: "must not contain duplicates",
    "minProperties": lambda n: f"must have at least {n} entries",
    "maxProperties": lambda n: f"must have at most {n} entries",
    "minimum": lambda n: f"must be at least {n}",
    "maximum": lambda n: f"must be at most {n}",
    "exclusiveMinimum": lambda n: f"must be more than {n}",
    "exclusiveMaximum": lambda n: f"must be less than {n}",
    "anyOf": lambda _: "does not match any of the allowed forms",
    "oneOf": lambda _: "must match exactly one of the allowed forms",
    "not": lambda _: "is not allowed in this combination",
}
