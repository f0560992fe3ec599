"""Recipients of an event: bare address strings or {"address", "name"} objects."""

from __future__ import annotations

from typing import Any, Iterator

from deskmail.schemas.addresses import address_problem, ascii_domain_form, normalized_address
from deskmail.schemas.header_text import header_text_problems
from deskmail.schemas.problems import ROOT, Problem, format_path

SENDING_FIELDS = ("to", "cc", "bcc")
RECIPIENT_FIELDS = (*SENDING_FIELDS, "reply_to")
NO_RECIPIENT = "needs at least one recipient in to, cc or bcc"


def recipient_problems(event: dict[str, Any]) -> list[Problem]:
    """Invalid addresses and display names, and an event without anyone to send to."""
    problems = []
    for parts, recipient in _recipients(event, RECIPIENT_FIELDS):
        problems.extend(_one_recipient_problems(parts, recipient))
    if not any(True for _ in _recipients(event, SENDING_FIELDS)):
        problems.append(Problem(ROOT, NO_RECIPIENT))
    return problems


def normalized_recipient(recipient: str | dict[str, Any]) -> dict[str, str]:
    """{"address": normalised, "name": name}, the name left out when absent or empty."""
    normalized = {"address": normalized_address(address_of(recipient))}
    name = recipient.get("name") if isinstance(recipient, dict) else None
    return {**normalized, "name": name} if name else normalized


def address_of(recipient: str | dict[str, Any]) -> str:
    """The address of a recipient in either form."""
    return recipient["address"] if isinstance(recipient, dict) else recipient


def unique_recipients(event: dict[str, Any]) -> list[str]:
    """Addresses over to, cc and bcc, first occurrence kept, duplicates found case-insensitively (a domain
    given once in Unicode and once in punycode is the same domain)."""
    seen: set[str] = set()
    unique = []
    for _, recipient in _recipients(event, SENDING_FIELDS):
        address = address_of(recipient)
        key = ascii_domain_form(address).lower()
        if key not in seen:
            seen.add(key)
            unique.append(address)
    return unique


def _recipients(event: dict[str, Any], fields: tuple[str, ...]) -> Iterator[tuple[list[str | int], Any]]:
    """(path parts, recipient) for every item of the list-valued fields."""
    for field in fields:
        items = event.get(field)
        for index, recipient in enumerate(items if isinstance(items, list) else ()):
            yield [field, index], recipient


def _one_recipient_problems(parts: list[str | int], recipient: Any) -> list[Problem]:
    """The address checked by email-validator; the display name checked as header text."""
    if isinstance(recipient, dict):
        problem = address_problem(format_path([*parts, "address"]), recipient.get("address"))
        names = header_text_problems(format_path([*parts, "name"]), recipient.get("name"))
        return [problem, *names] if problem else names
    problem = address_problem(format_path(parts), recipient)
    return [problem] if problem else []
