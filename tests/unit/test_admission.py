"""Admission against the in-memory store: limits held exactly, backlog reasons, duplicates, rejected events."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from deskmail.workers.admit import Admitter
from tests.unit.fakes import Clock, FakeStore, Handed, configure, event


def admit(store: FakeStore, events: list[dict], *, batch: bool = False) -> Handed:
    """Run the admit actor on the events, one message each, or all in one message (a batch)."""
    handed = Handed()
    admitter = Admitter(store, handed)
    for body in [events] if batch else events:
        admitter(body)
    return handed


def states(store: FakeStore, events: list[dict]) -> list[tuple[str, str | None]]:
    return [(m.state, m.reason) for m in (store.get_mail(e["event_id"]) for e in events)]


@pytest.mark.parametrize("batch", [False, True], ids=["one message each", "one batch"])
def test_exactly_the_daily_limit_is_queued_and_the_rest_waits_in_the_backlog(batch):
    store = FakeStore()
    configure(store, per_day=3)
    events = [event(subject=f"m{i}") for i in range(5)]
    handed = admit(store, events, batch=batch)
    # the first mail over the limit pauses the project: the next ones wait as the paused project's
    assert states(store, events) == [("queued", None)] * 3 + [("backlog", "daily_limit"),
                                                              ("backlog", "project_paused")]
    assert store.get_mail(events[3]["event_id"]).detail == "daily limit of 3 reached"
    assert store.sent_today("alpha", "UTC") == 3
    assert store.get_project("alpha").paused_reason == "daily_limit"
    assert sorted(handed.ids) == sorted(e["event_id"] for e in events[:3])


def test_the_global_daily_limit_holds_across_projects_and_gives_the_project_unit_back():
    store = FakeStore()
    configure(store, "alpha")
    configure(store, "beta")
    store.set_global_limits(per_day=2)
    events = [event("alpha"), event("beta"), event("beta"), event("alpha")]
    admit(store, events)
    assert states(store, events) == [("queued", None), ("queued", None)] + [("backlog", "global_daily_limit")] * 2
    assert store.get_mail(events[2]["event_id"]).detail == \
        "global daily limit of 2 reached (MAIL_LIMIT_PER_DAY_SMTP)"
    assert store.sent_today("*", "UTC") == 2
    assert (store.sent_today("alpha", "UTC"), store.sent_today("beta", "UTC")) == (1, 1)
    # each project whose mail found the global day full is paused with that reason
    assert store.get_project("beta").paused_reason == store.get_project("alpha").paused_reason == \
        "global_daily_limit"


@pytest.mark.parametrize("project_limit, global_limit, to, expected", [
    (3, 2, ("a@example.com", "b@example.com"), ("queued", None)),
    (3, 2, ("a@example.com", "b@example.com", "c@example.com"), ("backlog", "too_many_recipients")),
    (2, None, ("a@example.com", "b@example.com", "c@example.com"), ("backlog", "too_many_recipients")),
    (None, 0, tuple(f"u{i}@example.com" for i in range(30)), ("queued", None)),  # 0: no limit
    (1, None, ("a@example.com", "A@example.com"), ("queued", None)),  # one recipient, written twice
])
def test_a_mail_with_more_recipients_than_the_tighter_limit_waits_and_takes_no_unit(project_limit, global_limit,
                                                                                    to, expected):
    store = FakeStore()
    configure(store, recipients=project_limit)
    store.set_global_limits(recipients_per_mail=global_limit)
    mail = event(to=to)
    admit(store, [mail])
    assert states(store, [mail]) == [expected]
    assert store.sent_today("alpha", "UTC") == (expected[0] == "queued")
    if expected[0] == "backlog":
        assert store.get_mail(mail["event_id"]).detail == f"too many recipients, {len(to)} > " \
                                                          f"{min(n for n in (project_limit, global_limit) if n)}"
        assert store.get_project("alpha").paused_reason is None  # one big mail does not stop the others


def test_a_paused_projects_mail_goes_to_the_backlog_without_taking_a_unit():
    store = FakeStore()
    configure(store, "alpha")
    configure(store, "beta")
    store.set_pause("alpha", "admin")
    events = [event("alpha"), event("beta")]
    handed = admit(store, events)
    assert states(store, events) == [("backlog", "project_paused"), ("queued", None)]
    assert store.get_mail(events[0]["event_id"]).detail == "project paused (admin)"
    assert store.sent_today("alpha", "UTC") == 0
    assert handed.ids == [events[1]["event_id"]]


def test_an_event_published_twice_is_admitted_once():
    store = FakeStore()
    configure(store, per_day=1)
    mail = event()
    admit(store, [mail, dict(mail)])           # redelivered
    admit(store, [mail, dict(mail)], batch=True)  # twice in one batch
    assert states(store, [mail]) == [("queued", None)]  # its own unit, not a second one over the limit
    assert store.project_counts("alpha") == {"queued": 1}
    assert store.sent_today("alpha", "UTC") == 1
    assert store.get_project("alpha").paused_reason is None


@pytest.mark.parametrize("change, named", [
    ({"subject": None}, "subject: is required"),
    ({"to": ["not an address"]}, "to[0]: is not a valid e-mail address"),
    ({"kind": "gossip"}, "kind"),
])
def test_an_invalid_event_is_kept_rejected_under_its_id_with_the_field_named(change, named):
    store = FakeStore()
    configure(store)
    bad = {k: v for k, v in {**event(), **change}.items() if v is not None}
    good = event()
    handed = admit(store, [bad, good], batch=True)
    rejected = store.get_mail(bad["event_id"])
    assert (rejected.state, rejected.reason) == ("rejected", "invalid_event") and named in rejected.detail
    assert states(store, [good]) == [("queued", None)] and handed.ids == [good["event_id"]]
    assert store.sent_today("alpha", "UTC") == 1


def test_a_message_that_is_no_event_is_kept_rejected_and_the_worker_goes_on():
    store = FakeStore()
    admitter = Admitter(store, Handed())
    admitter("not an event")
    admitter([{"event_id": "x"}, 17])
    [row, *_] = store.list_state("rejected")
    assert row["reason"] == "invalid_event" and row["detail"].startswith("(root): the message must carry one event")
    assert len(store.list_state("rejected")) == 3


def test_an_event_of_an_unknown_project_is_rejected_unless_a_default_project_sends_it():
    store = FakeStore()
    lost = event("nowhere")
    admit(store, [lost])
    assert states(store, [lost]) == [("rejected", "unknown_project")]
    assert store.get_mail(lost["event_id"]).detail == "project: no settings for 'nowhere' and no default project"
    configure(store, "default", service="exchange")
    found = event("nowhere")
    handed = admit(store, [found])
    assert states(store, [found]) == [("queued", None)]
    assert store.get_mail(found["event_id"]).mail_service == "exchange" and handed.messages[0][0] == "exchange"


def test_each_project_counts_its_own_day_in_its_time_zone():
    clock = Clock(datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc))  # 23:30 in Kiritimati (UTC+14)
    store = FakeStore(clock)
    configure(store, "kiri", per_day=1, time_zone="Pacific/Kiritimati")
    configure(store, "utc", per_day=1)
    admit(store, [event("kiri"), event("utc")])
    clock.advance(3600)  # a new day in Kiritimati, the same day in UTC
    store.unpause(None)
    late = [event("kiri"), event("utc")]
    admit(store, late)
    assert states(store, late) == [("queued", None), ("backlog", "daily_limit")]
    assert store.sent_today("kiri", "Pacific/Kiritimati") == 1 and store.sent_today("utc", "UTC") == 1


def test_an_event_the_database_refuses_is_rejected_alone_and_the_batch_is_admitted():
    store = FakeStore(refuses=lambda e: e["subject"] == "refused")
    configure(store, per_day=2)
    events = [event(subject="a"), event(subject="refused"), event(subject="b")]
    handed = admit(store, events, batch=True)
    assert states(store, events) == [("queued", None), ("rejected", "invalid_event"), ("queued", None)]
    assert store.get_mail(events[1]["event_id"]).detail.startswith("(event): PostgreSQL refused the data")
    assert store.sent_today("alpha", "UTC") == 2 and len(handed.ids) == 2  # the failed batch took nothing
