"""The transport actor's work: lease the ledger row, build the message, send, record the outcome.

Read top to bottom: `claim` -> `prepare` -> `send` (the phase hook marks the DATA window under the
lease) -> `judge` (what the attempt came to) -> `record` (until PostgreSQL takes it). Once a
server has answered, the outcome is written however long the database takes to come back; the
send is never repeated because of a database fault.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Protocol

from deskmail import schemas
from deskmail.workers import logcontext, metrics
from deskmail.workers.attachments import MissingAttachment, attachments_of
from deskmail.workers.config import Config
from deskmail.workers.constants import MailService, Reason, State
from deskmail.workers.gate import DataGate, GroupWrites
from deskmail.workers.handing import Enqueue, hand_on
from deskmail.workers.leases import LeaseKeeper
from deskmail.workers.message import Sender, build, message_id_for
from deskmail.workers.records import AttemptOutcome, Claim, Requeue
from deskmail.workers.settings import ProjectSettings, SettingsService
from deskmail.workers.store import patiently
from deskmail.workers.transports import phase
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure

log = logging.getLogger(__name__)
MAX_BATCH = 1000  # event ids one transport message may carry


def sender_of(settings: ProjectSettings) -> Sender:
    """The From of a project's mail."""
    doc = settings.document
    return Sender(doc["from_address"], doc.get("from_name"), doc.get("reply_to"),
                  doc.get("list_unsubscribe_url"), doc.get("list_unsubscribe_post", True))


def envelope_for(event: dict, settings: ProjectSettings, now: datetime,
                 only: Iterable[str] | None = None, contents: Mapping[str, bytes] | None = None) -> Envelope:
    """Build the message of an event with the project's sender; `only` limits the recipients (on a retry
    after a partial delivery, those that were deferred); `contents` holds its attachments' bytes by sha256."""
    sender = sender_of(settings)
    message_id = message_id_for(event["event_id"], sender.address.rpartition("@")[2])
    files = attachments_of(event, contents or {})
    data = build(event, sender, message_id, now, files)
    recipients = tuple(only) if only else tuple(schemas.unique_recipients(event))
    bare = (lambda: build(event, sender, message_id, now)) if files else None
    return Envelope(uuid.UUID(str(event["event_id"])), sender.address, recipients, data, message_id, files, bare)


class DeliveryStore(Protocol):
    """What delivery needs of the store: Store's methods of the same names (or a fake with their rules)."""

    def claim(self, event_ids: list[str], worker: str, lease: float, service: str) -> list[Claim]: ...

    def reroute(self, event_ids: list[str], service: str) -> list[Requeue]: ...

    def attachment_contents(self, event: dict[str, Any]) -> dict[str, bytes]: ...

    def record_outcomes(self, done: list[tuple[Claim, AttemptOutcome]], worker: str) -> set[uuid.UUID]: ...


class Deliverer:
    """Callable behind every transport actor; the transport is chosen by the project's settings."""

    def __init__(self, service: MailService, store: DeliveryStore, settings: SettingsService,
                 transports: Mapping[str, Transport], config: Config, leases: LeaseKeeper, worker: str,
                 enqueue: Enqueue, writes: GroupWrites,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.service, self.store, self.settings, self.transports = service, store, settings, transports
        self.config, self.leases, self.worker, self.enqueue, self.clock = config, leases, worker, enqueue, clock
        self.writes = writes  # the DATA phases of the process's sending threads, written together

    def __call__(self, event_ids: str | list[str]) -> None:
        """Deliver a batch of mails by event id (one id is a batch of one); records before notifications.

        Mails not in `queued` are someone else's (or done). Each mail's DATA phase is written, under
        its lease, right before it is handed over, in the same round trip as the outcomes of the mails
        finished before it; the last outcomes are written at the end.
        """
        ids = [event_ids] if isinstance(event_ids, str) else [str(i) for i in event_ids][:MAX_BATCH]
        claims = patiently(lambda: self.store.claim(ids, self.worker, self.config.lease_seconds, self.service))
        if len(claims) < len(ids):
            self._not_claimed(ids, claims)
        claims.sort(key=lambda c: -c.priority)
        with self.leases.holding(claims):
            gate = DataGate(self.writes, self._recorded)
            for claim in claims:
                gate.finished(claim, self.attempt(claim, gate))
            self.record(gate.unwritten())

    def _not_claimed(self, ids: list[str], claims: list[Claim]) -> None:
        claimed = {str(c.event_id) for c in claims}
        rest = [i for i in ids if i not in claimed]
        moved = hand_on(self.enqueue, patiently(lambda: self.store.reroute(rest, self.service)))
        log.info("%d of %d mails not sent here: %d now go through another mail service, the others are "
                 "taken, done or not due", len(rest), len(ids), moved)

    def attempt(self, claim: Claim, gate: DataGate) -> AttemptOutcome:
        """Prepare and send one claimed mail; what it came to."""
        # every line logged from here on is about this mail (the middleware restores the context after the call)
        logcontext.start(event_id=str(claim.event_id), project=claim.project, attempt=claim.attempt)
        contents = patiently(lambda: self.store.attachment_contents(claim.event)) if claim.event.get("attachments") \
            else {}
        try:
            settings = self.settings.load(claim.settings_key, claim.settings_version)
            logcontext.bind(service=settings.service)
            transport = self.transports[settings.service]
            envelope = envelope_for(claim.event, settings, self.clock(), claim.deferred, contents)
        except MissingAttachment as exc:  # the mail's fault (kept past its retention), not the settings'
            return AttemptOutcome("failed", State.FAILED, str(exc), "permanent", refund=not claim.deferred)
        except Exception as exc:  # noqa: BLE001 - a bad mail or setting must end in a state, not a crash
            log.warning("mail %s cannot be prepared: %s", claim.event_id, type(exc).__name__)
            detail = f"cannot prepare the mail: {exc}"
            return AttemptOutcome("configuration", State.FAILED, detail, "configuration", refund=True,
                                  config_error=detail)
        started = time.perf_counter()
        try:
            with phase.watching(lambda: gate.enter(claim)):
                delivered = transport.send(settings, envelope)
            metrics.send_finished(settings.service, "delivered", time.perf_counter() - started)
        except TransportFailure as failure:
            metrics.send_finished(settings.service, str(failure.outcome), time.perf_counter() - started)
            log.info("mail %s: %s: %s", claim.event_id, failure.outcome, failure.detail)
            return self.judge_failure(claim, envelope, failure)
        except Exception as exc:  # noqa: BLE001 - an unforeseen error still ends in a state
            log.exception("mail %s: unexpected error in the %s transport", claim.event_id, settings.service)
            outcome = Outcome.AMBIGUOUS if gate.entered(claim) else Outcome.TRANSIENT
            internal = TransportFailure(outcome, f"internal error: {type(exc).__name__}")
            return self.judge_failure(claim, envelope, internal)
        return self.judge_delivered(claim, envelope, delivered)

    def judge_delivered(self, claim: Claim, envelope: Envelope, delivered: Delivered) -> AttemptOutcome:
        """The outcome of a send the server took (perhaps for some recipients only)."""
        if delivered.deferred:
            detail = "some recipients deferred: " + "; ".join(f"{a}: {r}" for a, r in delivered.deferred.items())
            failure = TransportFailure(Outcome.TRANSIENT, detail, refused={**delivered.refused, **delivered.deferred})
            return self._retry(claim, failure, "partial", deferred=tuple(delivered.deferred))
        return AttemptOutcome("partial" if delivered.refused else "sent", State.SENT, delivered.detail,
                              refused=delivered.refused, message_id=envelope.message_id)

    def judge_failure(self, claim: Claim, envelope: Envelope, failure: TransportFailure) -> AttemptOutcome:
        """The outcome of a send that did not (or may not have) gone through."""
        never_left = not claim.deferred  # after a partial delivery some recipients already have it
        if failure.outcome is Outcome.TRANSIENT:
            return self._retry(claim, failure, "retry")
        if failure.outcome is Outcome.QUOTA:
            return AttemptOutcome("quota", State.BACKLOG, failure.detail, Reason.PROVIDER_QUOTA,
                                  refund=never_left, pause=Reason.PROVIDER_QUOTA)
        if failure.outcome is Outcome.CONFIGURATION:
            return AttemptOutcome("configuration", State.FAILED, failure.detail, "configuration",
                                  failure.refused, refund=never_left, config_error=failure.detail)
        if failure.outcome is Outcome.AMBIGUOUS:
            return AttemptOutcome("ambiguous", State.AMBIGUOUS, failure.detail, "no_final_reply",
                                  message_id=envelope.message_id)
        return AttemptOutcome("failed", State.FAILED, failure.detail, "permanent", failure.refused,
                              refund=never_left)

    def _retry(self, claim: Claim, failure: TransportFailure, label: str,
               deferred: tuple[str, ...] = ()) -> AttemptOutcome:
        age = (self.clock() - claim.received_at).total_seconds()
        if age > self.config.retry_lifetime:
            return AttemptOutcome("failed", State.FAILED, f"gave up after {claim.attempt} attempts: {failure.detail}",
                                  "expired", failure.refused, refund=not claim.deferred and not deferred)
        delay = failure.retry_after or min(self.config.retry_cap, self.config.retry_base * 2 ** (claim.attempt - 1))
        return AttemptOutcome(label, State.QUEUED, failure.detail, refused=failure.refused, deferred=deferred,
                              delay=delay)

    def record(self, done: list[tuple[Claim, AttemptOutcome]]) -> None:
        """Write the outcomes, waiting for PostgreSQL as long as it takes; never sends again for them."""
        self._recorded(done, patiently(lambda: self.store.record_outcomes(done, self.worker)))

    def _recorded(self, done: list[tuple[Claim, AttemptOutcome]], taken: set[uuid.UUID]) -> None:
        self.leases.release([claim for claim, _ in done])
        for claim, outcome in done:
            metrics.mail_outcome(claim.project, self.service,
                                 outcome.label if claim.event_id in taken else "lease_lost")
            if claim.event_id not in taken:
                log.warning("mail %s: outcome %s kept in the attempt history only; the lease had been taken over",
                            claim.event_id, outcome.label)
