"""What a log line is about: the mail an actor call is working on, kept in context variables.

A middleware binds the event id around each actor call; the delivery code adds project, service and
attempt once it knows them; a logging filter copies them onto every record of that call.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
from types import MappingProxyType
from typing import Iterator, Mapping

FIELDS = ("event_id", "project", "service", "attempt")
HOST = os.environ.get("HOSTNAME") or socket.gethostname()

# Every call sets a new mapping; the shared default is read-only so no call can write into another's.
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "deskmail_log_context", default=MappingProxyType({}))


def bind(**fields: object) -> None:
    """Add fields (event_id, project, service, attempt) to the current call's context; None values are skipped."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def start(**fields: object) -> contextvars.Token:
    """Begin a fresh context for one actor call; returns the token `end` needs."""
    return _context.set({k: v for k, v in fields.items() if v is not None})


def end(token: contextvars.Token) -> None:
    """Leave the call's context (threads are reused for the next message)."""
    try:
        _context.reset(token)
    except ValueError:  # reset from another context: clearing is all that matters
        _context.set({})


def current() -> dict[str, object]:
    """The fields bound for the current call."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts host and the bound mail fields on every record (None where the record is about no mail)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        bound = _context.get()
        record.host = HOST
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound.get(name))
        return True


def items(record: logging.LogRecord) -> Iterator[tuple[str, object]]:
    """The bound mail fields of a record that are set."""
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            yield name, value
