"""Delivery against the in-memory store and a scripted transport: each outcome as the ledger keeps it, leases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deskmail.workers.admit import Admitter
from deskmail.workers.constants import MailService
from deskmail.workers.errors import StoreUnavailable
from deskmail.workers.transports.base import Delivered, Outcome, TransportFailure
from tests.unit.fakes import (FAILURES, Before, FakeStore, FakeTransport, Handed, configure, deliver, deliverer,
                              event, failure)

def admitted(store: FakeStore, n: int = 1, **limits) -> list[str]:
    configure(store, **limits)
    events = [event(subject=f"m{i}", to=("a@example.com", "b@example.com")) for i in range(n)]
    Admitter(store, Handed())(events)
    return [e["event_id"] for e in events]


def history(store: FakeStore, event_id: str) -> list[tuple[int, str]]:
    return [(a.attempt, a.outcome) for a in store.attempts_of(event_id)]


def test_a_sent_mail_is_recorded_with_its_message_id_and_keeps_its_unit():
    store = FakeStore()
    [mail] = admitted(store)
    transport = deliver(store, [mail], Delivered("250 2.0.0 queued as 7"))
    row = store.get_mail(mail)
    assert (row.state, row.attempts, row.detail) == ("sent", 1, "250 2.0.0 queued as 7")
    assert row.message_id == transport.envelopes[0].message_id and row.lease_until is None
    assert history(store, mail) == [(1, "sent")] and store.sent_today("alpha", "UTC") == 1


def test_a_transient_failure_is_retried_with_a_doubling_backoff_up_to_the_cap_and_not_before():
    store = FakeStore()
    [mail] = admitted(store)
    transport = FakeTransport(*[failure("transient")] * 6, Delivered("250 OK"))
    send = deliverer(store, transport)
    for attempt, delay in enumerate((10, 20, 40, 80, 100, 100), start=1):
        send([mail])
        row = store.get_mail(mail)
        assert (row.state, row.next_attempt_at - store.clock()) == ("queued", timedelta(seconds=delay))
        send([mail])  # not due yet: not even claimed
        assert (len(transport.envelopes), store.get_mail(mail).attempts) == (attempt, attempt)
        store.clock.advance(delay - 1)
        assert store.take_due_retries() == []
        store.clock.advance(1)
        assert [r.event_id for r in store.take_due_retries()] == [row.event_id]
    send([mail])
    assert (store.get_mail(mail).state, store.get_mail(mail).attempts) == ("sent", 7)


def test_a_servers_retry_after_is_the_delay():
    store = FakeStore()
    [mail] = admitted(store)
    deliver(store, [mail], TransportFailure(Outcome.TRANSIENT, "429 Too Many Requests", retry_after=7))
    assert store.get_mail(mail).next_attempt_at - store.clock() == timedelta(seconds=7)


def test_a_permanent_failure_fails_the_mail_and_gives_its_unit_back_to_the_next_one():
    store = FakeStore()
    [mail] = admitted(store, per_day=1)
    deliver(store, [mail], failure("permanent"))
    row = store.get_mail(mail)
    assert (row.state, row.reason, row.detail) == ("failed", "permanent", "550 5.1.1 no such user")
    assert row.refused == {"user@example.com": "550"} and store.sent_today("alpha", "UTC") == 0
    store.unpause("alpha")
    [after] = admitted(store, per_day=1)
    assert store.get_mail(after).state == "queued"  # the limit still holds exactly: one unit for one mail


def test_an_ambiguous_mail_keeps_its_unit_and_is_not_retried():
    store = FakeStore()
    [mail] = admitted(store)
    transport = deliver(store, [mail], failure("ambiguous"))
    row = store.get_mail(mail)
    assert (row.state, row.reason) == ("ambiguous", "no_final_reply")
    assert row.message_id == transport.envelopes[0].message_id  # a resend carries the same Message-ID
    assert store.sent_today("alpha", "UTC") == 1 and store.take_due_retries() == []
    store.clock.advance(86400)
    assert deliver(store, [mail]).envelopes == []


def test_a_providers_quota_pauses_the_project_into_the_backlog_and_gives_the_unit_back():
    store = FakeStore()
    [mail] = admitted(store)
    deliver(store, [mail], failure("quota"))
    row = store.get_mail(mail)
    assert (row.state, row.reason) == ("backlog", "provider_quota")
    assert store.get_project("alpha").paused_reason == "provider_quota" and store.sent_today("alpha", "UTC") == 0
    [after] = admitted(store)
    assert (store.get_mail(after).state, store.get_mail(after).reason) == ("backlog", "project_paused")


def test_a_configuration_error_is_shown_on_the_project_until_a_mail_goes_out():
    store = FakeStore()
    first, second = admitted(store, 2)
    deliver(store, [first], failure("configuration"))
    assert store.get_mail(first).state == "failed" and store.sent_today("alpha", "UTC") == 1
    assert store.get_project("alpha").config_error == "535 5.7.8 bad credentials"
    deliver(store, [second])
    assert store.get_project("alpha").config_error is None


def test_after_a_partial_delivery_only_the_deferred_recipients_get_the_retry_and_the_unit_is_kept():
    store = FakeStore()
    [mail] = admitted(store)
    first = deliver(store, [mail], Delivered("250 OK", deferred={"b@example.com": "452 4.2.2 mailbox full"}))
    assert first.envelopes[0].recipients == ("a@example.com", "b@example.com")
    row = store.get_mail(mail)
    assert (row.state, row.refused) == ("queued", {"b@example.com": "452 4.2.2 mailbox full"})
    store.clock.advance(10)
    store.take_due_retries()
    second = deliver(store, [mail], failure("permanent"))
    assert second.envelopes[0].recipients == ("b@example.com",)
    assert store.get_mail(mail).state == "failed" and store.sent_today("alpha", "UTC") == 1  # a got it


def test_a_mail_failing_past_its_retry_lifetime_gives_up_and_gives_its_unit_back():
    store = FakeStore()
    [mail] = admitted(store)
    deliver(store, [mail], failure("transient"), retry_lifetime=60)
    store.clock.advance(61)
    store.take_due_retries()
    deliver(store, [mail], Before(failure("transient")), retry_lifetime=60)
    row = store.get_mail(mail)
    assert (row.state, row.reason) == ("failed", "expired") and row.detail.startswith("gave up after 2 attempts")
    assert store.sent_today("alpha", "UTC") == 0


def test_a_worker_whose_lease_was_taken_over_during_data_does_not_write_over_the_next_attempt():
    store = FakeStore()
    [mail] = admitted(store)
    second = FakeTransport(failure("transient"))

    def meanwhile(envelope) -> None:  # the first worker's server is slow: its lease expires, another sends
        store.clock.advance(61)
        store.take_over(grace=30)
        store.clock.advance(31)
        assert [str(r.event_id) for r in store.take_over(grace=30)] == [mail]
        deliverer(store, second, worker="host:2")([mail])

    first = FakeTransport(Delivered("250 OK"), on_data=meanwhile)
    deliverer(store, first, lease_seconds=60)([mail])
    row = store.get_mail(mail)
    assert (row.state, row.attempts, row.takeovers, row.duplicate_risk) == ("queued", 2, 1, True)
    assert row.next_attempt_at is not None  # the second worker's retry stands
    assert len(first.envelopes) == len(second.envelopes) == 1
    assert history(store, mail) == [(1, "sent"), (2, "retry")]  # what the first server said is kept


def test_a_late_outcome_after_a_takeover_is_written_when_nobody_claimed_the_mail_again():
    store = FakeStore()
    [mail] = admitted(store)

    def meanwhile(envelope) -> None:
        store.clock.advance(61)
        store.take_over(grace=0)
        store.clock.advance(1)
        store.take_over(grace=0)
        assert store.get_mail(mail).state == "queued"

    first = FakeTransport(Delivered("250 OK"), on_data=meanwhile)
    deliverer(store, first)([mail])
    assert store.get_mail(mail).state == "sent"
    assert deliver(store, [mail]).envelopes == []  # the takeover's requeue finds it sent: no second copy


def test_a_lease_taken_over_before_data_stops_the_send_and_the_other_worker_sends_it_once():
    store = FakeStore()
    [mail] = admitted(store)
    second = FakeTransport()

    def connecting(envelope) -> None:
        store.clock.advance(61)
        store.take_over(grace=0)
        store.clock.advance(1)
        store.take_over(grace=0)
        deliverer(store, second, worker="host:2")([mail])

    first = FakeTransport(Delivered("250 OK"), on_connect=connecting)
    deliverer(store, first)([mail])
    assert first.envelopes == [] and len(second.envelopes) == 1
    row = store.get_mail(mail)
    assert (row.state, row.duplicate_risk) == ("sent", False)  # lost before DATA: no copy can have left


def test_a_redelivered_transport_message_sends_nothing_twice():
    store = FakeStore()
    ids = admitted(store, 3)
    assert len(deliver(store, ids).envelopes) == 3
    assert deliver(store, ids).envelopes == []
    assert {store.get_mail(i).attempts for i in ids} == {1}


def test_a_mail_whose_project_moved_to_another_service_is_handed_to_that_service_and_not_sent_here():
    store = FakeStore()
    [mail] = admitted(store)
    configure(store, service="exchange")
    handed = Handed()
    assert deliver(store, [mail], handed=handed).envelopes == []
    assert handed.messages == [(MailService.EXCHANGE, [mail], 1)]
    assert (store.get_mail(mail).state, store.get_mail(mail).mail_service) == ("queued", "exchange")


def test_an_accepted_mail_is_recorded_once_the_database_is_back_and_never_sent_again():
    store = FakeStore()
    [mail] = admitted(store)
    store.fail("record_outcomes", StoreUnavailable("PostgreSQL: server closed the connection unexpectedly"))
    transport = deliver(store, [mail])
    assert len(transport.envelopes) == 1 and store.get_mail(mail).state == "sent"
    assert store.calls["record_outcomes"] == 2


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_every_outcome_releases_the_lease(name):
    store = FakeStore()
    [mail] = admitted(store)
    deliver(store, [mail], failure(name))
    row = store.get_mail(mail)
    assert row.state != "sending" and row.lease_until is None
