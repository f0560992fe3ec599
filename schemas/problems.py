"""Problem and InvalidPayload: what is wrong with a payload, and where."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ROOT = "(root)"
_MAX_SEGMENT = 64
_NUMBERS = re.compile(r"([0-9]+)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a payload: the field's path and a short human message."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidPayload(ValueError):
    """A payload broke its schema; `problems` lists every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[InvalidPayload], tuple[tuple[Problem, ...]]]:
        return (InvalidPayload, (self.problems,))


def format_path(parts: Iterable[str | int]) -> str:
    """`to[2]`, `headers.X-Foo`, `smtp.port`, or `(root)` for no parts."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{_segment(part)}"
    return text.lstrip(".") or ROOT


def _segment(name: str) -> str:
    """A caller-chosen key made safe to print: shortened, control characters escaped."""
    short = name if len(name) <= _MAX_SEGMENT else name[:_MAX_SEGMENT] + "..."
    return short if short.isprintable() else ascii(short)[1:-1]


def sort_key(problem: Problem) -> list[str | int]:
    """Orders paths naturally, so `to[2]` comes before `to[10]` and `(root)` first."""
    parts = _NUMBERS.split(problem.path)
    return [int(part) if index % 2 else part for index, part in enumerate(parts)]
