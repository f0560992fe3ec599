"""Handing queued mails to their transport queues: a message per service, kind and TRANSPORT_BATCH mails."""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from deskmail.workers.constants import TRANSPORT_BATCH, MailService
from deskmail.workers.records import Requeue

Enqueue = Callable[[MailService, list[str], int], None]


class DueStore(Protocol):
    """What handing due mails on needs of the store."""

    def take_due_retries(self, limit: int = 500) -> list[Requeue]: ...


def hand_on(enqueue: Enqueue, mails: Iterable[Requeue], batch: int = TRANSPORT_BATCH) -> int:
    """Give mails to their transport queues, records first; returns how many."""
    groups: dict[tuple[str, int], list[str]] = {}
    count = 0
    for mail in mails:
        count += 1
        if mail.mail_service:
            groups.setdefault((mail.mail_service, mail.priority), []).append(str(mail.event_id))
    for (service, priority), ids in sorted(groups.items(), key=lambda g: -g[0][1]):
        for start in range(0, len(ids), batch):
            enqueue(MailService(service), ids[start:start + batch], priority)
    return count


def hand_on_due(store: DueStore, enqueue: Enqueue, limit: int = 1000) -> int:
    """Hand at most `limit` due mails (retries, resumed backlog) to the broker."""
    return hand_on(enqueue, store.take_due_retries(limit))
