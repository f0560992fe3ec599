"""Checks JSON Schema cannot express: real addresses, one-line header text, real time zones."""

from __future__ import annotations

from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from deskmail.schemas.addresses import address_problem
from deskmail.schemas.compiled import EVENT, EVENT_V1, SETTINGS
from deskmail.schemas.header_text import header_text_problems
from deskmail.schemas.mail_parts import mail_part_problems
from deskmail.schemas.problems import Problem, format_path
from deskmail.schemas.recipients import recipient_problems

RESERVED_HEADER_PREFIX = "x-deskmail-"
RESERVED = "the X-Deskmail- prefix is reserved for deskmail's own headers"
BAD_TIME_ZONE = "is not a known IANA time zone name, e.g. Europe/Berlin or UTC"
_SERVICES_WITH_SENDER = ("exchange", "exchange_oauth2", "gmail_oauth2")


def semantic_problems(name: str, payload: Any) -> list[Problem]:
    """The semantic problems of a payload of schema `name` (none for schemas without such checks)."""
    check = _CHECKS.get(name)
    return check(payload) if check and isinstance(payload, dict) else []


def event_problems(event: dict[str, Any]) -> list[Problem]:
    """Addresses, recipients, header text and header names of a notification event."""
    problems = recipient_problems(event)
    problems += header_text_problems("subject", event.get("subject"))
    problems += _record_problems(event.get("record"))
    problems += _header_problems(event.get("headers"))
    problems += mail_part_problems(event)
    return problems


def settings_problems(settings: dict[str, Any]) -> list[Problem]:
    """Addresses, the From display name and the time zone of project settings."""
    problems = [address_problem(path, value) for path, value in _settings_addresses(settings)]
    problems.append(_time_zone_problem(settings.get("time_zone")))
    found = [problem for problem in problems if problem is not None]
    return found + header_text_problems("from_name", settings.get("from_name"))


def _record_problems(record: Any) -> list[Problem]:
    """The record's type and id end up in headers, so they are header text."""
    if not isinstance(record, dict):
        return []
    return [problem for field in ("type", "id")
            for problem in header_text_problems(f"record.{field}", record.get(field))]


def _header_problems(headers: Any) -> list[Problem]:
    """Header values as header text; reserved and case-insensitively repeated names."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for name, value in headers.items() if isinstance(headers, dict) else ():
        path = format_path(["headers", name])
        if name.lower().startswith(RESERVED_HEADER_PREFIX):
            problems.append(Problem(path, RESERVED))
        elif name.lower() in seen:
            problems.append(Problem(path, "repeats a header name (header names ignore case)"))
        seen.add(name.lower())
        problems += header_text_problems(path, value)
    return problems


def _settings_addresses(settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """(path, value) of from_address, reply_to and every service block's sender."""
    found = [(field, settings.get(field)) for field in ("from_address", "reply_to")]
    blocks = [(service, settings.get(service)) for service in _SERVICES_WITH_SENDER]
    return found + [(f"{service}.sender", block.get("sender"))
                    for service, block in blocks if isinstance(block, dict)]


def _time_zone_problem(time_zone: Any) -> Problem | None:
    """A problem unless zoneinfo can load the time zone (absent means UTC)."""
    if not isinstance(time_zone, str):
        return None
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return Problem("time_zone", BAD_TIME_ZONE)
    return None


_CHECKS: dict[str, Callable[[dict[str, Any]], list[Problem]]] = {
    EVENT: event_problems,
    EVENT_V1: event_problems,
    SETTINGS: settings_problems,
}
