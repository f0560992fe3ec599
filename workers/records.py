"""Small frozen records the store returns; actors and the CLI never see cursors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cache
from typing import Any, Mapping


class _FromRow:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]):
        """Build the record from a dict row, ignoring columns it does not name."""
        return cls(**{name: row[name] for name in _field_names(cls) if name in row})  # type: ignore[arg-type]


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Admission(_FromRow):
    """What admission decided for one event."""

    state: str
    reason: str | None
    detail: str | None
    mail_service: str | None
    is_new: bool


@dataclass(frozen=True)
class Claim(_FromRow):
    """A mail a transport worker has claimed for sending."""

    event_id: uuid.UUID
    project: str
    kind: str
    priority: int
    event: dict
    message_id: str
    attempt: int
    lease_token: uuid.UUID
    claimed_at: datetime
    received_at: datetime
    deferred: list[str] | None
    settings_key: str
    settings_version: int


@dataclass(frozen=True)
class AttemptOutcome:
    """What one delivery attempt came to, as the ledger records it."""

    label: str                      # sent, partial, retry, failed, configuration, ambiguous, quota, not_sent
    state: str                      # the mail's next state
    detail: str
    reason: str | None = None
    refused: dict[str, str] = field(default_factory=dict)
    deferred: tuple[str, ...] = ()  # recipients still to send to, on a retry
    message_id: str | None = None
    delay: float = 0.0              # seconds before the retry
    refund: bool = False            # the mail certainly never left: give its unit of quota back
    config_error: str | None = None
    pause: str | None = None        # pause the project with this reason (a provider's quota)


@dataclass(frozen=True)
class Attempt(_FromRow):
    """One row of a mail's attempt history."""

    attempt: int
    worker: str
    started_at: datetime
    ended_at: datetime
    phase: str | None
    outcome: str
    detail: str | None


@dataclass(frozen=True)
class Mail(_FromRow):
    """One ledger entry: an event and what became of it."""

    event_id: uuid.UUID
    seq: int
    project: str | None
    kind: str | None
    priority: int
    state: str
    reason: str | None
    detail: str | None
    subject: str | None
    recipients: int | None
    mail_service: str | None
    message_id: str | None
    attempts: int
    takeovers: int
    duplicate_risk: bool
    phase: str | None
    claimed_by: str | None
    lease_until: datetime | None
    refused: dict | None
    next_attempt_at: datetime | None
    created_at: datetime | None
    received_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    sent_at: datetime | None
    event: dict | None = None


@dataclass(frozen=True)
class Project(_FromRow):
    """A project's row: settings (secrets still encrypted), limits, pause state."""

    key: str
    mail_service: str | None
    settings: dict | None
    secrets: bytes | None
    settings_version: int
    time_zone: str
    per_day: int | None
    recipients_per_mail: int | None
    paused_reason: str | None
    paused_at: datetime | None
    auto_resume: bool
    config_error: str | None
    config_error_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class GlobalLimits(_FromRow):
    """MAIL_LIMIT_PER_DAY_SMTP and RECIPIENTS_LIMIT_PER_MAIL_SMTP as stored; None or 0: no limit."""

    per_day: int | None
    recipients_per_mail: int | None
    time_zone: str


@dataclass(frozen=True)
class Requeue(_FromRow):
    """A mail the scheduler hands to its transport queue again."""

    event_id: uuid.UUID
    priority: int
    mail_service: str | None


@dataclass(frozen=True)
class MoveBatch:
    """One batch of a bulk action: how many mails it looked at, what became of them, which it moved."""

    examined: int
    counts: dict[str, int]
    outcomes: dict[str, str] | None  # per id, only when the caller gave ids
    moved: list[Requeue]
    projects: frozenset[str]


@dataclass(frozen=True)
class Heartbeat(_FromRow):
    """The newest scheduler heartbeat: when, how long ago, and how many schedulers beat within the window."""

    beat_at: datetime | None
    age: float | None
    fresh: int


@dataclass(frozen=True)
class Gauge:
    """One sample the metrics endpoint reads from the ledger on a scrape."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class ConsoleUser(_FromRow):
    """A console account; password_hash is argon2id, None for single sign-on only."""

    username: str
    password_hash: str | None
    role: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ConsoleSession(_FromRow):
    """A console login: whose it is, the role it acts with now, and its CSRF token."""

    username: str
    role: str
    csrf_token: str
    via: str
    expires_at: datetime


@dataclass(frozen=True)
class ConsoleJob(_FromRow):
    """A long console job (a Test action, a bulk action) and how far it got."""

    id: uuid.UUID
    kind: str
    title: str
    requested_by: str
    project: str | None
    total: int
    done: int
    steps: list
    ok: bool | None
    summary: str | None
    started_at: datetime
    finished_at: datetime | None
