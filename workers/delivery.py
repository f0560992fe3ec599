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
from typing import Callable, Iterable, Mapping

import schemas
from workers import logcontext, metrics
from workers.config import Config
from workers.constants import Reason, State
from workers.errors import StoreError
from workers.leases import LeaseKeeper
from workers.message import Sender, build, message_id_for
from workers.records import AttemptOutcome, Claim
from workers.settings import ProjectSettings, SettingsService
from workers.store import Store, patiently
from workers.transports import phase
from workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure

log = logging.getLogger(__name__)


def sender_of(settings: ProjectSettings) -> Sender:
    """The From of a project's mail."""
    doc = settings.document
    return Sender(doc["from_address"], doc.get("from_name"), doc.get("reply_to"))


def envelope_for(event: dict, settings: ProjectSettings, now: datetime,
                 only: Iterable[str] | None = None) -> Envelope:
    """Build the message of an event with the project's sender; `only` limits the recipients (on a retry
    after a partial delivery, those that were deferred)."""
    sender = sender_of(settings)
    message_id = message_id_for(event["event_id"], sender.address.rpartition("@")[2])
    data = build(event, sender, message_id, now)
    recipients = tuple(only) if only else tuple(schemas.unique_recipients(event))
    return Envelope(uuid.UUID(str(event["event_id"])), sender.address, recipients, data, message_id)


class Deliverer:
    """Callable behind every transport actor; the transport is chosen by the project's settings."""

    def __init__(self, store: Store, settings: SettingsService, transports: Mapping[str, Transport],
                 config: Config, leases: LeaseKeeper, worker: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.store, self.settings, self.transports = store, settings, transports
        self.config, self.leases, self.worker, self.clock = config, leases, worker, clock

    def __call__(self, event_id: str) -> None:
        """Deliver one mail by event id; a mail not in `queued` is someone else's (or done)."""
        claim = patiently(lambda: self.store.claim(event_id, self.worker, self.config.lease_seconds))
        if claim is None:
            log.info("mail %s is not queued (already taken or done); nothing to do", event_id)
            return
        logcontext.bind(project=claim.project, attempt=claim.attempt)
        with self.leases.holding(claim):
            outcome = self.attempt(claim)
            self.record(claim, outcome)

    def attempt(self, claim: Claim) -> AttemptOutcome:
        """Prepare and send one claimed mail; what it came to."""
        try:
            settings = self.settings.load(claim.settings_key, claim.settings_version)
            logcontext.bind(service=settings.service)
            transport = self.transports[settings.service]
            envelope = envelope_for(claim.event, settings, self.clock(), claim.deferred)
        except Exception as exc:  # noqa: BLE001 - a bad mail or setting must end in a state, not a crash
            log.warning("mail %s cannot be prepared: %s", claim.event_id, type(exc).__name__)
            detail = f"cannot prepare the mail: {exc}"
            return AttemptOutcome("configuration", State.FAILED, detail, "configuration", refund=True,
                                  config_error=detail)
        entered: list[bool] = []
        started = time.perf_counter()
        try:
            with phase.watching(lambda: self._enter_data(claim, entered)):
                delivered = transport.send(settings, envelope)
            metrics.send_finished(settings.service, "delivered", time.perf_counter() - started)
        except TransportFailure as failure:
            metrics.send_finished(settings.service, str(failure.outcome), time.perf_counter() - started)
            log.info("mail %s: %s: %s", claim.event_id, failure.outcome, failure.detail)
            return self.judge_failure(claim, envelope, failure)
        except Exception as exc:  # noqa: BLE001 - an unforeseen error still ends in a state
            log.exception("mail %s: unexpected error in the %s transport", claim.event_id, settings.service)
            outcome = Outcome.AMBIGUOUS if entered else Outcome.TRANSIENT
            return self.judge_failure(claim, envelope, TransportFailure(outcome, f"internal error: {type(exc).__name__}"))
        return self.judge_delivered(claim, envelope, delivered)

    def _enter_data(self, claim: Claim, entered: list[bool]) -> None:
        try:
            held = self.store.enter_data_phase(claim)
        except StoreError as exc:
            raise TransportFailure(Outcome.TRANSIENT, f"not sent: PostgreSQL did not record the DATA phase ({exc})") \
                from exc
        if not held:
            raise TransportFailure(Outcome.TRANSIENT, "not sent: this worker's lease was taken over before DATA")
        entered.append(True)

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

    def record(self, claim: Claim, outcome: AttemptOutcome) -> None:
        """Write the outcome, waiting for PostgreSQL as long as it takes; never sends again for it."""
        recorded = patiently(lambda: self.store.record_outcome(claim, self.worker, outcome))
        metrics.mail_outcome(claim.project, logcontext.current().get("service"),
                             outcome.label if recorded else "lease_lost")
        if not recorded:
            log.warning("mail %s: outcome %s kept in the attempt history only; the lease had been taken over",
                        claim.event_id, outcome.label)
        else:
            log.debug("mail %s: %s", claim.event_id, outcome.label)
