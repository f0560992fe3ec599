"""Checks on caller-supplied text that ends up in a mail header.

CPython before 3.11.10 (CVE-2024-6923) turns an encoded word such as
`=?utf-8?q?hi=0D=0ABcc:_evil@x.com?=` into a real header when it serialises
a message, and `str.splitlines` (used when folding) breaks on more than CR
and LF. So header text is checked here, not left to the runtime.
"""

from __future__ import annotations

import re

from schemas.problems import Problem

# Everything str.splitlines() breaks on: CR, LF, VT, FF, FS, GS, RS, NEL, LS, PS.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 controls except TAB, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")

LINE_BREAK = "contains a line break; header text must be one line"
ENCODED_WORD = "looks like an RFC 2047 encoded word (=?...?=); send plain Unicode text instead"


def header_text_problems(path: str, value: object) -> list[Problem]:
    """Problems of one header text: line breaks, control characters, encoded words."""
    if not isinstance(value, str):
        return []
    problems = []
    if _LINE_BREAK.search(value):
        problems.append(Problem(path, LINE_BREAK))
    elif control := _CONTROL.search(value):
        problems.append(Problem(path, _control_message(control.group())))
    if _ENCODED_WORD.search(value):
        problems.append(Problem(path, ENCODED_WORD))
    return problems


def _control_message(char: str) -> str:
    """Names the control character by code point, never by printing it."""
    return f"contains the control character U+{ord(char):04X}; header text must be printable"
