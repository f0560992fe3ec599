"""The delivery pipeline against a fake store and transport: what is sent, what is recorded, and when."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from deskmail.workers.config import Config
from deskmail.workers.constants import MailService, Reason, State
from deskmail.workers.delivery import Deliverer
from deskmail.workers.errors import ConfigurationError, StoreUnavailable
from deskmail.workers.gate import GroupWrites
from deskmail.workers.records import AttemptOutcome, Claim
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports import phase
from deskmail.workers.transports.base import Delivered, Outcome, Transport, TransportFailure

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


class FakeStore:
    """The store calls the Deliverer makes, with scripted database faults."""

    def __init__(self, *, outcome_faults: int = 0, phase_answer: bool | Exception = True, mails: int = 1) -> None:
        self.event_ids = [uuid.uuid4() for _ in range(mails)]
        self.event_id = self.event_ids[0]
        self.outcome_faults = outcome_faults
        self.phase_answer = phase_answer
        self.recorded: list[AttemptOutcome] = []
        self.record_calls = 0
        self.writes: list[tuple[list[uuid.UUID], uuid.UUID | None]] = []  # (outcomes written, DATA entered)

    def claim(self, event_ids, worker, lease, service) -> list[Claim]:  # noqa: ANN001
        def one(event_id: uuid.UUID) -> Claim:
            event = {"event_id": str(event_id), "project": "alpha", "kind": "notification",
                     "to": [{"address": "user@example.com"}], "subject": "Hi", "text": "Hello.\n"}
            return Claim(event_id, "alpha", "notification", 1, event, "<m@x>", 1, uuid.uuid4(), NOW, NOW, None,
                         "alpha", 1)
        return [one(e) for e in self.event_ids]

    def record_and_enter(self, done, entering, worker) -> tuple[set[uuid.UUID], set[uuid.UUID]]:  # noqa: ANN001
        if isinstance(self.phase_answer, Exception):
            raise self.phase_answer
        self.recorded.extend(outcome for _, outcome in done)
        [claim] = entering  # one sending thread: each write is its own
        self.writes.append(([c.event_id for c, _ in done], claim.event_id))
        return {c.event_id for c, _ in done}, {claim.event_id} if self.phase_answer else set()

    def record_outcomes(self, done: list[tuple[Claim, AttemptOutcome]], worker: str) -> set[uuid.UUID]:
        self.record_calls += 1
        if self.record_calls <= self.outcome_faults:
            raise StoreUnavailable("PostgreSQL: OperationalError: server closed the connection unexpectedly")
        self.recorded.extend(outcome for _, outcome in done)
        self.writes.append(([c.event_id for c, _ in done], None))
        return {claim.event_id for claim, _ in done}


class FakeSettings:
    def load(self, key: str, version: int) -> ProjectSettings:
        return ProjectSettings(key, version, "smtp", {"mail_service": "smtp", "from_address": "desk@example.org",
                                                     "smtp": {}})


class FakeTransport(Transport):
    """Hands the message over after the phase hook allowed it, then answers as scripted."""

    def __init__(self, answer: Delivered | TransportFailure) -> None:
        self.answer = answer
        self.handed_over = 0

    def send(self, settings, envelope) -> Delivered:  # noqa: ANN001
        phase.before_data()
        self.handed_over += 1
        if isinstance(self.answer, TransportFailure):
            raise self.answer
        return self.answer


class NoLeases:
    def holding(self, claims):  # noqa: ANN001
        import contextlib
        return contextlib.nullcontext()

    def release(self, claims):  # noqa: ANN001
        pass


def deliver(store: FakeStore, transport: FakeTransport, **config) -> FakeStore:
    cfg = Config(database_url="", amqp_url="", retry_base=10, retry_cap=100, **config)
    Deliverer(MailService.SMTP, store, FakeSettings(), {"smtp": transport}, cfg, NoLeases(), "host:1",
              lambda *a: None, GroupWrites(store, "host:1"), clock=lambda: NOW)([str(e) for e in store.event_ids])
    return store


def test_each_mail_enters_its_data_window_alone_with_the_outcomes_finished_before_it():
    store = deliver(FakeStore(mails=3), FakeTransport(Delivered("250 OK")))
    a, b, c = store.event_ids
    assert store.writes == [([], a), ([a], b), ([b], c), ([c], None)]  # one round trip per mail, and one at the end


def test_an_accepted_mail_is_recorded_after_a_database_fault_and_never_sent_again():
    transport = FakeTransport(Delivered("250 2.0.0 queued as 7"))
    store = deliver(FakeStore(outcome_faults=2), transport)
    assert transport.handed_over == 1
    assert store.record_calls == 3 and [o.state for o in store.recorded] == [State.SENT]


def test_a_lease_taken_over_before_data_stops_the_send():
    transport = FakeTransport(Delivered("250 OK"))
    store = deliver(FakeStore(phase_answer=False), transport)
    assert transport.handed_over == 0
    [outcome] = store.recorded
    assert outcome.state == State.QUEUED and "lease was taken over" in outcome.detail


def test_a_database_unreachable_before_data_stops_the_send_and_retries_later():
    transport = FakeTransport(Delivered("250 OK"))
    store = deliver(FakeStore(phase_answer=StoreUnavailable("PostgreSQL: no connection available")), transport)
    assert transport.handed_over == 0
    [outcome] = store.recorded
    assert outcome.state == State.QUEUED and outcome.delay == 10 and not outcome.refund


@pytest.mark.parametrize("failure, state, refund", [
    (TransportFailure(Outcome.PERMANENT, "550 5.1.1 no such user"), State.FAILED, True),
    (TransportFailure(Outcome.CONFIGURATION, "535 5.7.8 bad credentials"), State.FAILED, True),
    (TransportFailure(Outcome.QUOTA, "550 5.4.5 Daily user sending limit exceeded"), State.BACKLOG, True),
    (TransportFailure(Outcome.AMBIGUOUS, "no reply after the end of DATA"), State.AMBIGUOUS, False),
    (TransportFailure(Outcome.TRANSIENT, "451 4.3.0 try later"), State.QUEUED, False),
])
def test_only_a_mail_that_certainly_never_left_gives_its_quota_back(failure, state, refund):
    [outcome] = deliver(FakeStore(), FakeTransport(failure)).recorded
    assert (outcome.state, outcome.refund) == (state, refund)
    if state == State.BACKLOG:
        assert outcome.pause == Reason.PROVIDER_QUOTA


def test_a_lease_too_short_to_renew_is_refused_at_start():
    with pytest.raises(ConfigurationError, match="DESKMAIL_TAKEOVER_GRACE"):
        Config.from_env({"DESKMAIL_LEASE_SECONDS": "60", "DESKMAIL_TAKEOVER_GRACE": "5"})
    with pytest.raises(ConfigurationError, match="DESKMAIL_LEASE_SECONDS"):
        Config.from_env({"DESKMAIL_LEASE_SECONDS": "1"})
