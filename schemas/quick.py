"""A quick proof that a payload keeps its schema and the rules of schemas.shape, without running jsonschema.

jsonschema costs about a hundred microseconds per event (a validator object for every subschema it
visits, every type looked up in a registry), paid by the publisher and again at admission. The check here
is compiled once from the document the full validator uses, with its patterns through the same ECMA-262
translation and its formats through the same format checker, into plain closures; it answers only
"valid" or "cannot tell", and when it cannot tell the full validation runs and names every problem.

It never says "valid" where jsonschema or schemas.shape would find a problem:
- every keyword jsonschema validates must be one compiled here, or the schema is refused (NotProvable);
- only values whose type is exactly dict, list, str or bool pass (subclasses, tuples and numbers cannot
  tell), so "applies to strings" is `type(value) is str`, which is jsonschema's isinstance for them;
- every member is reached by a subschema that fixes its type and, for an object or a list, visits each
  of its own members (additionalProperties, items): every string and key is seen, checked for what
  schemas.shape refuses, and nesting is bounded by the schema's own depth, checked when compiling.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Callable

from jsonschema import FormatChecker

from deskmail.schemas.compiled import ecma_regex, validator
from deskmail.schemas.shape import MAX_DEPTH, carriable

log = logging.getLogger(__name__)
Check = Callable[[Any], bool]

_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool}
_ANY = frozenset(_TYPES.values())
# What is compiled below; a schema using any other keyword that jsonschema validates is refused.
_COMPILED = frozenset({"type", "enum", "maxLength", "minLength", "pattern", "format", "required", "maxProperties",
                       "minProperties", "properties", "additionalProperties", "propertyNames", "items", "maxItems",
                       "minItems", "anyOf", "allOf"})


class NotProvable(ValueError):
    """The schema uses a keyword or a form that the quick check does not compile."""


@lru_cache(maxsize=None)
def quick_check(name: str) -> Check:
    """The quick check of schema `name`: True proves a payload valid, False says nothing.

    A schema it cannot compile gets a check that never tells, so every payload goes to the full validation.
    """
    try:
        return compiled_check(name)
    except NotProvable as exc:
        log.warning("schema %s has no quick check (%s): every payload goes through jsonschema", name, exc)
        return _cannot_tell


def compiled_check(name: str) -> Check:
    """The quick check compiled from the full validator of schema `name` (NotProvable when it cannot be)."""
    full = validator(name)
    if full.format_checker is None:
        raise NotProvable(f"{name}: the full validator checks no formats")
    return _Compiler(frozenset(full.VALIDATORS), full.format_checker).node(full.schema, 0, member=True)


class _Compiler:
    """Turns one inlined schema into nested closures."""

    def __init__(self, keywords: frozenset[str], formats: FormatChecker) -> None:
        self.keywords = keywords  # every keyword the full validator acts on; the others are annotations
        self.formats = formats

    def node(self, schema: Any, depth: int, member: bool) -> Check:
        """The check of one subschema. A member's (a value's own, not a branch of anyOf/allOf nor what is below
        one) fixes the value's type, visits all its members and checks its text for what schemas.shape refuses;
        a branch only adds its constraints to those of the member it belongs to."""
        if not isinstance(schema, dict):
            raise NotProvable(f"a boolean schema at depth {depth}")
        if unknown := (set(schema) & self.keywords) - _COMPILED:
            raise NotProvable(f"keywords {sorted(unknown)} at depth {depth}")
        types = self.types(schema)
        if member and types == _ANY:
            raise NotProvable(f"a value of any type at depth {depth}: its members would go unseen")
        if member and types & {dict, list} and depth >= MAX_DEPTH:
            raise NotProvable(f"containers nested {depth} deep")
        checks: dict[type, list[Check]] = {kind: [] for kind in types}
        for kind, check in self.keyword_checks(schema, depth, member):
            for target in (types if kind is None else types & {kind}):
                checks[target].append(check)
        if member and str in checks:
            checks[str].append(carriable)  # after the length: an over-long text is not scanned
        return _dispatch(checks)

    def types(self, schema: dict[str, Any]) -> frozenset[type]:
        """The Python types a subschema admits, from `type` and `enum`."""
        named = schema.get("type", list(_TYPES))
        names = [named] if isinstance(named, str) else named
        if not all(name in _TYPES for name in names):
            raise NotProvable(f"type {named!r}")
        types = frozenset(_TYPES[name] for name in names)
        if "enum" in schema:
            if not all(isinstance(value, str) and carriable(value) for value in schema["enum"]):
                raise NotProvable("an enum of other values than text")
            types &= {str}
        return types

    def keyword_checks(self, schema: dict[str, Any], depth: int, member: bool) -> list[tuple[type | None, Check]]:
        """(the type a keyword applies to, None for every type; its check) for each keyword of a subschema."""
        found: list[tuple[type | None, Check]] = []
        if "enum" in schema:
            values = frozenset(schema["enum"])
            found.append((str, values.__contains__))
        found += [(str, _length(schema.get("minLength", 0), schema.get("maxLength")))] \
            if {"minLength", "maxLength"} & set(schema) else []
        if "pattern" in schema:
            found.append((str, _searches(ecma_regex(schema["pattern"]).search)))
        if "format" in schema:
            found.append((None, _conforms(self.formats, schema["format"])))
        found += self.object_checks(schema, depth, member)
        found += self.array_checks(schema, depth, member)
        for keyword, combine in (("anyOf", any), ("allOf", all)):
            if keyword in schema:
                branches = tuple(self.node(branch, depth, member=False) for branch in schema[keyword])
                found.append((None, _combined(combine, branches)))
        return found

    def object_checks(self, schema: dict[str, Any], depth: int, member: bool) -> list[tuple[type | None, Check]]:
        """required, the number of entries, and every entry's key and value."""
        found: list[tuple[type | None, Check]] = []
        if "required" in schema:
            required = tuple(schema["required"])
            found.append((dict, lambda value: all(key in value for key in required)))
        if {"minProperties", "maxProperties"} & set(schema):
            found.append((dict, _length(schema.get("minProperties", 0), schema.get("maxProperties"))))
        additional = schema.get("additionalProperties", True)
        if member and additional is True and dict in self.types(schema):
            raise NotProvable(f"an object at depth {depth} whose additional properties go unseen")
        properties = {key: self.node(sub, depth + 1, member) for key, sub in schema.get("properties", {}).items()}
        if not all(isinstance(key, str) and carriable(key) for key in properties):
            raise NotProvable("a property name that is not carriable text")
        if properties or additional is not True or "propertyNames" in schema:
            others = None if additional is False else self.node(additional, depth + 1, member) \
                if additional is not True else _anything
            names = self.node(schema["propertyNames"], depth, member=False) if "propertyNames" in schema else None
            found.append((dict, _entries(properties, others, names)))
        return found

    def array_checks(self, schema: dict[str, Any], depth: int, member: bool) -> list[tuple[type | None, Check]]:
        """The number of items and every item."""
        found: list[tuple[type | None, Check]] = []
        if {"minItems", "maxItems"} & set(schema):
            found.append((list, _length(schema.get("minItems", 0), schema.get("maxItems"))))
        if "items" in schema:
            item = self.node(schema["items"], depth + 1, member)
            found.append((list, lambda value: all(item(each) for each in value)))
        elif member and list in self.types(schema):
            raise NotProvable(f"a list at depth {depth} whose items go unseen")
        return found


def _dispatch(checks: dict[type, list[Check]]) -> Check:
    """One subschema's check: the value's exact type picks the keyword checks that apply to it."""
    by_type = {kind: tuple(found) for kind, found in checks.items()}

    def check(value: Any) -> bool:
        found = by_type.get(type(value))
        if found is None:
            return False
        for one in found:
            if not one(value):
                return False
        return True

    return check


def _length(least: int, most: int | None) -> Check:
    if not isinstance(least, int) or not isinstance(most, (int, type(None))):
        raise NotProvable("a length bound that is not a whole number")
    if most is None:
        return lambda value: len(value) >= least
    return lambda value: least <= len(value) <= most


def _searches(search: Callable[[str], object]) -> Check:
    return lambda value: search(value) is not None


def _conforms(formats: FormatChecker, name: str) -> Check:
    return lambda value: formats.conforms(value, name)


def _combined(combine: Callable[[Any], bool], branches: tuple[Check, ...]) -> Check:
    return lambda value: combine(branch(value) for branch in branches)


def _anything(value: Any) -> bool:
    return True


def _cannot_tell(value: Any) -> bool:
    return False


def _entries(properties: dict[str, Check], others: Check | None, names: Check | None) -> Check:
    """Every entry: a named property's value by its subschema, any other by `others` (None: not allowed)."""

    def check(value: dict[Any, Any]) -> bool:
        for key, member in value.items():
            if type(key) is not str:
                return False
            sub = properties.get(key)
            if sub is None:
                if others is None or not carriable(key):
                    return False
                sub = others
            if (names is not None and not names(key)) or not sub(member):
                return False
        return True

    return check
