"""The admit actor's work: validate, record in the ledger, take quota, hand on or divert to the backlog."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable

from dramatiq.middleware import CurrentMessage

import schemas
from workers.constants import Kind, MailService, State
from workers.rejects import Rejects, capped
from workers.store import Store

log = logging.getLogger(__name__)

Enqueue = Callable[[MailService, str, int], None]


def raw_bytes(args: tuple, kwargs: dict) -> bytes:
    """The message as received, as bytes for the rejected entry: its Dramatiq message id and arguments.

    The message id is part of it so that two distinct bad messages with the same arguments (say,
    none) get a row each, while a redelivery of one (same id) finds its row.
    """
    current = CurrentMessage.get_current_message()
    body = {"message_id": current.message_id if current is not None else None, "args": list(args), "kwargs": kwargs}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8", "replace")


def own_event_id(body: Any) -> uuid.UUID | None:
    """The event's own id when it has a valid one (a republished bad event finds its row)."""
    if isinstance(body, dict) and isinstance(body.get("event_id"), str):
        try:
            return uuid.UUID(body["event_id"])
        except ValueError:
            pass
    return None


class Admitter:
    """Callable behind the `deskmail.admit` actor."""

    def __init__(self, store: Store, enqueue: Enqueue) -> None:
        self.store = store
        self.enqueue = enqueue
        self.rejects = Rejects(store)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Admit one event; whatever it holds, it ends in a ledger state and the worker goes on."""
        if len(args) != 1 or kwargs or not isinstance(args[0], dict):
            self._reject(args, kwargs, "(root): the message must carry exactly one event object as its only argument")
            return
        try:
            event = schemas.normalize_event(args[0])
        except schemas.InvalidPayload as exc:
            self._reject(args, kwargs, capped(exc.problems))
            return
        kind = Kind(event["kind"])
        recipients = len(schemas.unique_recipients(event))
        admission = self.store.admit(event, priority=kind.priority, recipients=recipients)
        if admission.state == State.QUEUED:
            self.enqueue(MailService(admission.mail_service), event["event_id"], kind.priority)
        log.debug("event %s of %s: %s%s%s", event["event_id"], event["project"], admission.state,
                 f" ({admission.detail})" if admission.detail else "", "" if admission.is_new else " (seen before)")

    def reject_raw(self, raw: bytes, reason: str, detail: str) -> uuid.UUID:
        """Keep a message that is not an admissible envelope as `rejected` (an excerpt and its size)."""
        return self.rejects.keep(None, raw, reason, detail)

    def _reject(self, args: tuple, kwargs: dict, detail: str) -> None:
        body = args[0] if len(args) == 1 and isinstance(args[0], dict) else {}
        self.rejects.keep(own_event_id(body), raw_bytes(args, kwargs), "invalid_event", detail,
                          body.get("project"), body.get("kind"))
