"""E-mail addresses checked and normalised by email-validator (never by email.utils)."""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, DOT_ATOM_TEXT

from deskmail.schemas.header_text import address_text_problems
from deskmail.schemas.problems import Problem

MAX_LENGTH = 320  # longer ones are reported by the schema; email-validator would be slow on them
ADDRESS_MAX = 254  # email-validator's limit on the whole address (RFC 5321's path, less its brackets)
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9.-]+\Z")  # what a plain ASCII domain is made of (punycode included)
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def address_problem(path: str, value: object) -> Problem | None:
    """A problem when `value` is a string but not a valid address, or not fit for a header."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH:
        return None
    text = address_text_problems(path, value)
    if text:
        return text[0]
    reason = _checked(value)[1]
    return Problem(path, f"is not a valid e-mail address: {reason}") if reason else None


def normalized_address(value: str) -> str:
    """email-validator's normalised form of a valid address (ValueError when invalid).

    The address is kept as it was given: an ASCII address keeps its punycode domain (only lowercased),
    a Unicode one its Unicode domain; the SMTP client writes the domain as punycode where it must.
    """
    normalized, reason = _checked(value)
    if reason:
        raise ValueError(f"{value!r} is not a valid e-mail address: {reason}")
    return normalized


def ascii_domain_form(address: str) -> str:
    """The address with its domain in IDNA (punycode) form; the local part is left as it is."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}@{_ascii_domain(domain) or domain}"  # an invalid one is not ours to fix: validated on the way in


@lru_cache(maxsize=8192)
def _ascii_domain(domain: str) -> str:
    """The IDNA 2008 (UTS 46) form of a domain email-validator accepts, as it computes it, or "" (invalid)."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return ""


@lru_cache(maxsize=8192)
def _checked(value: str) -> tuple[str, str]:
    """(normalised address, "") or ("", reason); cached as the same people get mail all day."""
    return _plain(value) or _validated(value)


def _plain(value: str) -> tuple[str, str] | None:
    """The common address, a plain ASCII local part at a valid plain ASCII domain, without the full check.

    email-validator's cost is in the domain (IDNA rules per character), which repeats across the people
    of a customer: it is checked once per domain. The local part is checked by email-validator's own
    dot-atom rule; the mailbox names it lowercases, lengths near the limit and every other form (quoted,
    Unicode, literal, display name, invalid) go the full way, so the answer is the same as
    `_validated`'s (tests/unit/test_addresses.py compares both).
    """
    local, at, domain = value.rpartition("@")
    if not (at and value.isascii() and DOT_ATOM_TEXT.match(local) and _PLAIN_DOMAIN.match(domain)) \
            or local.lower() in _CASE_INSENSITIVE:
        return None
    ascii_domain = _ascii_domain(domain)
    address = f"{local}@{ascii_domain}"
    return (address, "") if ascii_domain and len(value) <= ADDRESS_MAX and len(address) <= ADDRESS_MAX else None


def _validated(value: str) -> tuple[str, str]:
    """email-validator's whole check."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return "", str(exc)
    if value.isascii() and result.ascii_email:
        return result.ascii_email, ""
    return result.normalized, ""
