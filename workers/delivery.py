"""The transport actor's work: claim the ledger row, build the message, send, record the outcome."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

import schemas
from workers.attachments import MissingAttachment, attachments_of
from workers.config import Config
from workers.constants import Reason, State
from workers.message import Sender, build, message_id_for
from workers.records import Claim
from workers.settings import ProjectSettings, SettingsService
from workers.store import Store
from workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure

log = logging.getLogger(__name__)


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


class Deliverer:
    """Callable behind every transport actor; the transport is chosen by the project's settings."""

    def __init__(self, store: Store, settings: SettingsService, transports: Mapping[str, Transport],
                 config: Config, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.store, self.settings, self.transports = store, settings, transports
        self.config, self.clock = config, clock

    def __call__(self, event_id: str) -> None:
        """Deliver one mail by event id; a mail not in `queued` is someone else's (or done)."""
        claim = self.store.claim(event_id)
        if claim is None:
            log.info("mail %s is not queued (already taken or done); nothing to do", event_id)
            return
        try:
            settings = self.settings.load(claim.settings_key, claim.settings_version)
            transport = self.transports[settings.service]
            envelope = envelope_for(claim.event, settings, self.clock(), claim.deferred,
                                    self.store.attachment_contents(claim.event))
        except MissingAttachment as exc:  # the mail's fault (kept past its retention), not the settings'
            self.store.mark_final(claim.event_id, State.FAILED, "permanent", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bad mail or setting must end in a state, not a crash
            log.warning("mail %s cannot be prepared: %s", event_id, type(exc).__name__)
            self.store.mark_final(claim.event_id, State.FAILED, "configuration", f"cannot prepare the mail: {exc}")
            self.store.record_config_error(claim.project, f"cannot prepare mail: {exc}")
            return
        try:
            delivered = transport.send(settings, envelope)
        except TransportFailure as failure:
            self._failed(claim, envelope, failure)
            return
        except Exception as exc:  # noqa: BLE001 - an unforeseen error is retried, never left in `sending`
            log.exception("mail %s: unexpected error in the %s transport", event_id, settings.service)
            self._failed(claim, envelope, TransportFailure(Outcome.TRANSIENT, f"internal error: {type(exc).__name__}"))
            return
        self._delivered(claim, envelope, delivered)

    def _delivered(self, claim: Claim, envelope: Envelope, delivered: Delivered) -> None:
        if delivered.deferred:
            failure = TransportFailure(Outcome.TRANSIENT, "some recipients deferred: " +
                                       "; ".join(f"{a}: {r}" for a, r in delivered.deferred.items()),
                                       refused={**delivered.refused, **delivered.deferred})
            self._retry(claim, failure, deferred=list(delivered.deferred))
            return
        self.store.mark_sent(claim.event_id, delivered.detail, delivered.refused or None, envelope.message_id)
        log.debug("mail %s sent", claim.event_id)

    def _failed(self, claim: Claim, envelope: Envelope, failure: TransportFailure) -> None:
        log.info("mail %s: %s: %s", claim.event_id, failure.outcome, failure.detail)
        if failure.outcome is Outcome.TRANSIENT:
            self._retry(claim, failure)
        elif failure.outcome is Outcome.QUOTA:
            self.store.mark_backlog(claim.event_id, Reason.PROVIDER_QUOTA, failure.detail)
            self.store.pause_project(claim.project, Reason.PROVIDER_QUOTA)
        elif failure.outcome is Outcome.CONFIGURATION:
            self.store.mark_final(claim.event_id, State.FAILED, "configuration", failure.detail, failure.refused)
            self.store.record_config_error(claim.project, failure.detail)
        elif failure.outcome is Outcome.AMBIGUOUS:
            self.store.mark_final(claim.event_id, State.AMBIGUOUS, "no_final_reply", failure.detail,
                                  message_id=envelope.message_id)
        else:
            self.store.mark_final(claim.event_id, State.FAILED, "permanent", failure.detail, failure.refused)

    def _retry(self, claim: Claim, failure: TransportFailure, deferred: list[str] | None = None) -> None:
        age = (self.clock() - claim.received_at).total_seconds()
        if age > self.config.retry_lifetime:
            self.store.mark_final(claim.event_id, State.FAILED, "expired",
                                  f"gave up after {claim.attempts} attempts: {failure.detail}", failure.refused)
            return
        delay = failure.retry_after or min(self.config.retry_cap,
                                           self.config.retry_base * 2 ** (claim.attempts - 1))
        self.store.mark_retry(claim.event_id, failure.detail, delay, failure.refused or None, deferred)
