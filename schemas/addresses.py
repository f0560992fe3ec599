"""E-mail addresses checked and normalised by email-validator (never by email.utils)."""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from schemas.problems import Problem

MAX_LENGTH = 320  # longer ones are reported by the schema; email-validator would be slow on them


def address_problem(path: str, value: object) -> Problem | None:
    """A problem when `value` is a string but not a valid address."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH:
        return None
    reason = _checked(value)[1]
    return Problem(path, f"is not a valid e-mail address: {reason}") if reason else None


def normalized_address(value: str) -> str:
    """email-validator's normalised form of a valid address (ValueError when invalid)."""
    normalized, reason = _checked(value)
    if reason:
        raise ValueError(f"{value!r} is not a valid e-mail address: {reason}")
    return normalized


@lru_cache(maxsize=8192)
def _checked(value: str) -> tuple[str, str]:
    """(normalised address, "") or ("", reason); cached as the same people get mail all day."""
    try:
        return validate_email(value, check_deliverability=False).normalized, ""
    except EmailNotValidError as exc:
        return "", str(exc)
