"""Checks on a payload's shape that come before everything else: nesting depth and text that cannot travel.

JSON Schema validation, deep copies and JSON encoding all recurse, so a payload nested a hundred
thousand levels deep must be refused by a walk that does not. And some strings are valid Python but
cannot be carried on: PostgreSQL refuses U+0000 in text and jsonb, SMTP and every header refuse it,
and a lone surrogate (U+D800 to U+DFFF) has no UTF-8 encoding at all.
"""

from __future__ import annotations

import re
from typing import Any

from deskmail.schemas.problems import Problem, format_path

MAX_DEPTH = 32  # far above any payload of the three schemas (settings are the deepest, at 4)
MAX_TEXT_PROBLEMS = 10  # per payload: a million bad strings need not make a million messages
_UNCARRIABLE = re.compile("[\x00\ud800-\udfff]")

TOO_DEEP = f"is nested more than {MAX_DEPTH} levels deep"
NOT_A_STRING_KEY = "has a key that is not a string"
FATAL = frozenset({TOO_DEEP, NOT_A_STRING_KEY})  # the schema's own checks cannot look into such a payload


def shape_problems(payload: Any) -> list[Problem]:
    """Too deep nesting (reported alone: nothing else can be checked) or strings that cannot be carried."""
    problems: list[Problem] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(payload, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, (dict, list, tuple)) and len(parts) >= MAX_DEPTH:
            return [Problem(format_path(parts), TOO_DEEP)]
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):  # JSON has none; json.dumps would fail on some, rename others
                    if len(problems) < MAX_TEXT_PROBLEMS:
                        problems.append(Problem(format_path(parts), NOT_A_STRING_KEY))
                    continue
                if len(problems) < MAX_TEXT_PROBLEMS:
                    _text(problems, key, (*parts, key), "its name")
                stack.append((child, (*parts, key)))
        elif isinstance(value, (list, tuple)):  # a Python caller's tuple is encoded as a JSON list
            stack.extend((child, (*parts, index)) for index, child in enumerate(value))
        elif isinstance(value, str) and len(problems) < MAX_TEXT_PROBLEMS:
            _text(problems, value, parts, "the text")
    return problems


def carriable(text: str) -> bool:
    """True when text holds neither NUL nor a lone surrogate (an ASCII text can only hold the NUL)."""
    return "\x00" not in text if text.isascii() else _UNCARRIABLE.search(text) is None


def _text(problems: list[Problem], text: str, parts: tuple[str | int, ...], what: str) -> None:
    """Adds a problem when text holds a character that PostgreSQL, UTF-8 or SMTP cannot carry."""
    found = _UNCARRIABLE.search(text)
    if found is None:
        return
    char = ord(found.group())
    why = "NUL, which PostgreSQL and mail cannot carry" if char == 0 else \
        "a lone surrogate, which is not Unicode text and has no UTF-8 form"
    problems.append(Problem(format_path(parts), f"{what} contains U+{char:04X} ({why})"))
