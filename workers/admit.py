"""The admit actor's work: validate, record in the ledger, take quota, hand on or divert to the backlog."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Mapping, Protocol, Sequence

from dramatiq.middleware import CurrentMessage

from deskmail import schemas
from deskmail.workers import metrics
from deskmail.schemas.mail_parts import AttachmentCaps, size_problems
from deskmail.workers import attachments
from deskmail.workers.constants import Kind, State
from deskmail.workers.errors import DataRefused
from deskmail.workers.handing import Enqueue, hand_on
from deskmail.workers.records import Admission, Requeue
from deskmail.workers.rejects import Rejects, RejectStore, capped
from deskmail.workers.store import patiently

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # events one admit message may carry


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


def admissible(body: dict[str, Any], caps: AttachmentCaps) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The normalized event with its attachments' bytes moved out into blobs {sha256: bytes}
    (InvalidPayload when it breaks the contract or the caps)."""
    event = schemas.normalize_event(body)
    if too_large := size_problems(event, caps):
        raise schemas.InvalidPayload(too_large)
    return attachments.extract(event)  # the bytes leave the event here: the ledger keeps references


class AdmissionStore(RejectStore, Protocol):
    """What admission needs of the store: Store's methods of the same names (or a fake with their rules)."""

    def admit_many(self, items: list[tuple[dict[str, Any], int, int]]) -> list[Admission]: ...

    def admit_with_attachments(self, items: list[tuple[dict[str, Any], int, int]],
                               blobs: Mapping[str, bytes]) -> list[Admission]: ...

    def reachable(self) -> bool: ...  # the dead-letter drain tells a refused statement from a database away


class Admitter:
    """Callable behind the `deskmail.admit` actor."""

    def __init__(self, store: AdmissionStore, enqueue: Enqueue, caps: AttachmentCaps | None = None) -> None:
        self.store = store
        self.enqueue = enqueue
        self.caps = caps or AttachmentCaps()
        self.rejects = Rejects(store)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Admit one event, or a batch of them (a list), in one transaction; whatever a message holds,
        each event ends in a ledger state and the worker goes on."""
        if len(args) != 1 or kwargs or not isinstance(args[0], (dict, list)):
            self._reject(args, kwargs, "(root): the message must carry one event object, or a list of them, "
                                       "as its only argument")
            return
        bodies = [args[0]] if isinstance(args[0], dict) else args[0][:MAX_BATCH]
        for extra in args[0][MAX_BATCH:] if isinstance(args[0], list) else ():
            self._reject((extra,), {}, f"(root): a batch carries at most {MAX_BATCH} events")
        blobs: dict[str, bytes] = {}  # attachment bytes by sha256, moved out of the events by _checked
        items = [item for item in (self._checked(body, blobs) for body in bodies) if item is not None]
        admissions: Sequence[Admission | None]
        try:
            admissions = patiently(lambda: self._admit(items, blobs))
        except DataRefused:  # some event's data cannot be stored: admit one by one, reject that one alone
            admissions = [self._admit_alone(item, blobs) for item in items]
        self._hand_on([(event, admission) for (event, _, _), admission in zip(items, admissions) if admission])

    def _checked(self, body: Any, blobs: dict[str, bytes]) -> tuple[dict, int, int] | None:
        """The normalized event (attachment bytes moved into blobs) with its priority and recipient count, or
        None once rejected."""
        if not isinstance(body, dict):
            self._reject((body,), {}, "(root): an event must be a JSON object")
            return None
        try:
            event, stored = admissible(body, self.caps)
        except schemas.InvalidPayload as exc:
            self._reject((body,), {}, capped(exc.problems))
            return None
        blobs.update(stored)
        return event, Kind(event["kind"]).priority, len(schemas.unique_recipients(event))

    def _admit(self, items: list[tuple[dict, int, int]], blobs: dict[str, bytes]) -> list[Admission]:
        """Admit items in one transaction, storing their attachments' blobs in it when there are any."""
        if not blobs:
            return self.store.admit_many(items)
        return self.store.admit_with_attachments(items, blobs)

    def _admit_alone(self, item: tuple[dict, int, int], blobs: dict[str, bytes]) -> Admission | None:
        try:
            return patiently(lambda: self._admit([item], attachments.blobs_of(item[0], blobs)))[0]
        except DataRefused as exc:  # bad data is the event's fault: rejected, never retried
            self._reject((item[0],), {}, f"(event): {exc}")
            return None

    def _hand_on(self, admitted: list[tuple[dict, Admission]]) -> None:
        """One transport message per mail service and kind for the queued mails (records first)."""
        queued = []
        for event, admission in admitted:
            if admission.is_new:
                metrics.admitted(event["project"], admission.state, admission.reason)
            log.debug("event %s of %s: %s%s%s", event["event_id"], event["project"], admission.state,
                      f" ({admission.detail})" if admission.detail else "",
                      "" if admission.is_new else " (seen before)")
            if admission.state == State.QUEUED:
                queued.append(Requeue(event["event_id"], Kind(event["kind"]).priority, admission.mail_service))
        hand_on(self.enqueue, queued)

    def reject_raw(self, raw: bytes, reason: str, detail: str) -> uuid.UUID:
        """Keep a message that is not an admissible envelope as `rejected` (an excerpt and its size)."""
        return self.rejects.keep(None, raw, reason, detail)

    def _reject(self, args: tuple, kwargs: dict, detail: str) -> None:
        body = args[0] if len(args) == 1 and isinstance(args[0], dict) else {}
        self.rejects.keep(own_event_id(body), raw_bytes(args, kwargs), "invalid_event", detail,
                          body.get("project"), body.get("kind"))
        project = body.get("project")
        metrics.admitted(project if isinstance(project, str) else None, State.REJECTED, "invalid_event")
