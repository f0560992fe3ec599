"""E-mail addresses checked and normalised by email-validator (never by email.utils)."""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from deskmail.schemas.header_text import address_text_problems
from deskmail.schemas.problems import Problem

MAX_LENGTH = 320  # longer ones are reported by the schema; email-validator would be slow on them


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
    return f"{local}@{_ascii_domain(domain)}"


@lru_cache(maxsize=8192)
def _ascii_domain(domain: str) -> str:
    """The IDNA 2008 (UTS 46) form of a domain, as email-validator computes it."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return domain  # not ours to fix here: the address was validated on the way in


@lru_cache(maxsize=8192)
def _checked(value: str) -> tuple[str, str]:
    """(normalised address, "") or ("", reason); cached as the same people get mail all day."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return "", str(exc)
    if value.isascii() and result.ascii_email:
        return result.ascii_email, ""
    return result.normalized, ""
