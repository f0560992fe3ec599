"""Queue names, actor names, mail states and backlog reasons: the one place they are spelled."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    """RabbitMQ queues, one per actor; transports get one each so ops can scale them apart."""

    ADMIT = "deskmail.admit"
    CONTROL = "deskmail.control"
    SMTP = "deskmail.smtp"
    EXCHANGE = "deskmail.exchange"
    EXCHANGE_OAUTH2 = "deskmail.exchange_oauth2"
    GMAIL_OAUTH2 = "deskmail.gmail_oauth2"

    @property
    def record_actor(self) -> str:
        """The actor on this queue for record mails, which a worker runs before the queue's own actor."""
        return f"{self.value}.record"

    @property
    def test_actor(self) -> str:
        """The actor on a transport queue that runs the Test action on the workers that send its mail."""
        return f"{self.value}.test"


class MailService(enum.StrEnum):
    """The outgoing mail service a project picks, as in the product's SMTP Settings screen."""

    SMTP = "smtp"
    EXCHANGE = "exchange"
    EXCHANGE_OAUTH2 = "exchange_oauth2"
    GMAIL_OAUTH2 = "gmail_oauth2"

    @property
    def queue(self) -> Queue:
        """The queue (and actor name) of this service's transport actor."""
        return Queue(f"deskmail.{self.value}")


class Kind(enum.StrEnum):
    """What produced a mail; record mails go before notifications wherever order is decided."""

    NOTIFICATION = "notification"
    RECORD = "record"

    @property
    def priority(self) -> int:
        """AMQP priority (higher first) and backlog drain precedence."""
        return 5 if self is Kind.RECORD else 1


class State(enum.StrEnum):
    """Every event ends in exactly one of the final states; nothing is dropped silently."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    BACKLOG = "backlog"
    SUSPENDED = "suspended"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"
    REJECTED = "rejected"


class Reason(enum.StrEnum):
    """Why a mail waits in the backlog."""

    DAILY_LIMIT = "daily_limit"
    GLOBAL_DAILY_LIMIT = "global_daily_limit"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    PROJECT_PAUSED = "project_paused"
    PROVIDER_QUOTA = "provider_quota"


MAX_PRIORITY = 10
"""x-max-priority of every deskmail queue; publishers must not declare queues with other arguments."""

TRANSPORT_BATCH = 20
"""Most event ids per transport message: big enough to share a claim, small enough that a record mail
arriving behind a batch waits for at most one of them per worker thread."""
