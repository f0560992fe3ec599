"""Checks on caller-supplied text that ends up in a mail header: one rule for every such field.

CPython before 3.11.10 (CVE-2024-6923) turns an encoded word such as
`=?utf-8?q?hi=0D=0ABcc:_evil@x.com?=` into a real header when it serialises
a message, mail clients decode encoded words wherever they find them (in a
display name, even in an address's local part), and `str.splitlines` (used
when folding) breaks on more than CR and LF. So header text, addresses
included, is checked here, not left to the runtime or the receiver.
"""

from __future__ import annotations

import re

from deskmail.schemas.problems import Problem

# Everything str.splitlines() breaks on: CR, LF, VT, FF, FS, GS, RS, NEL, LS, PS.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 controls except TAB, DEL and C1 controls; addresses may not even hold a TAB. NUL is left to
# schemas.shape, which refuses it in every string of a payload (header text or not) with its own message.
_CONTROL = re.compile("[\x01-\x08\x0a-\x1f\x7f-\x9f]")
_ADDRESS_CONTROL = re.compile("[\x01-\x1f\x7f-\x9f]")
# The opening of an RFC 2047 encoded word, `=?charset?B?` or `=?charset?Q?` in any case, with any charset
# (RFC 2231's `charset*language` too). Decoders read the encoded text up to the next `?=`, question marks
# inside it included, and some do without the closing `?=`: the opening alone is refused, so no form
# that any decoder would turn into text (control characters included) gets through.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bq]\?", re.IGNORECASE)

LINE_BREAK = "contains a line break; header text must be one line"
ENCODED_WORD = "looks like an RFC 2047 encoded word (=?...?=); send plain Unicode text instead"


def header_text_problems(path: str, value: object) -> list[Problem]:
    """Problems of one header text: line breaks, control characters (TAB allowed), encoded words."""
    return _problems(path, value, _CONTROL)


def address_text_problems(path: str, value: object) -> list[Problem]:
    """The same rule for an address, which goes into To/Cc and the SMTP envelope: no TAB either."""
    return _problems(path, value, _ADDRESS_CONTROL)


def _problems(path: str, value: object, control_chars: re.Pattern[str]) -> list[Problem]:
    if not isinstance(value, str):
        return []
    problems = []
    if _LINE_BREAK.search(value):
        problems.append(Problem(path, LINE_BREAK))
    elif control := control_chars.search(value):
        problems.append(Problem(path, _control_message(control.group())))
    if _ENCODED_WORD.search(value):
        problems.append(Problem(path, ENCODED_WORD))
    return problems


def _control_message(char: str) -> str:
    """Names the control character by code point, never by printing it."""
    return f"contains the control character U+{ord(char):04X}; header text must be printable"
