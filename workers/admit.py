"""The admit actor's work: validate, record in the ledger, take quota, hand on or divert to the backlog."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable

import schemas
from schemas.mail_parts import AttachmentCaps, size_problems
from workers import attachments
from workers.constants import Kind, MailService, State
from workers.store import Store

log = logging.getLogger(__name__)
REJECTED_NAMESPACE = uuid.UUID("5b0f8f0e-3c1e-4d55-9a43-0d6a1e6f2b70")

Enqueue = Callable[[MailService, str, int], None]


def raw_text(args: tuple, kwargs: dict) -> str:
    """The event as received, as text, for the rejected entry."""
    body = args[0] if len(args) == 1 and not kwargs else {"args": list(args), "kwargs": kwargs}
    try:
        return json.dumps(body, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(body)


def event_id_of(body: Any, raw: str) -> uuid.UUID:
    """The event's own id when it has a valid one, else one derived from its bytes (stable on redelivery)."""
    if isinstance(body, dict):
        try:
            return uuid.UUID(str(body.get("event_id")))
        except ValueError:
            pass
    return uuid.uuid5(REJECTED_NAMESPACE, raw)


class Admitter:
    """Callable behind the `deskmail.admit` actor."""

    def __init__(self, store: Store, enqueue: Enqueue, caps: AttachmentCaps | None = None) -> None:
        self.store = store
        self.enqueue = enqueue
        self.caps = caps or AttachmentCaps()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Admit one event; whatever it holds, it ends in a ledger state and the worker goes on."""
        if len(args) != 1 or kwargs or not isinstance(args[0], dict):
            self._reject(args, kwargs, "(root): the message must carry exactly one event object as its only argument")
            return
        try:
            event = schemas.normalize_event(args[0])
        except schemas.InvalidPayload as exc:
            self._reject(args, kwargs, str(exc))
            return
        if too_large := size_problems(event, self.caps):
            self._reject(args, kwargs, str(schemas.InvalidPayload(too_large)))
            return
        kind = Kind(event["kind"])
        recipients = len(schemas.unique_recipients(event))
        if event.get("attachments"):
            event, blobs = attachments.extract(event)
            admission = self.store.admit_with_attachments(event, blobs, priority=kind.priority, recipients=recipients)
        else:
            admission = self.store.admit(event, priority=kind.priority, recipients=recipients)
        if admission.state == State.QUEUED:
            self.enqueue(MailService(admission.mail_service), event["event_id"], kind.priority)
        log.debug("event %s of %s: %s%s%s", event["event_id"], event["project"], admission.state,
                 f" ({admission.detail})" if admission.detail else "", "" if admission.is_new else " (seen before)")

    def reject_raw(self, raw: str, detail: str) -> None:
        """Keep a message that is not even an envelope as `rejected`, with its raw text."""
        event_id = uuid.uuid5(REJECTED_NAMESPACE, raw)
        self.store.reject(event_id, detail, raw)
        log.warning("message %s rejected: %s", event_id, detail)

    def _reject(self, args: tuple, kwargs: dict, detail: str) -> None:
        args = tuple(attachments.without_contents(arg) for arg in args)
        raw = raw_text(args, kwargs)
        body = args[0] if len(args) == 1 else None
        event_id = event_id_of(body, raw)
        self.store.reject(event_id, detail, raw, body if isinstance(body, dict) else None)
        log.warning("event %s rejected: %s", event_id, detail)
