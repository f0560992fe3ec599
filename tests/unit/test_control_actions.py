"""Control actions against the in-memory store: resume, suspend, retry, counts per outcome, auto resume."""

from __future__ import annotations

import pytest

from deskmail.producers.control import control_message
from deskmail.workers.admit import Admitter
from deskmail.workers.constants import Kind
from deskmail.workers.control import Controller, sign
from deskmail.workers.transports.base import Delivered
from tests.unit.fakes import FakeStore, Handed, configure, deliver, event, failure

KEY = "unit-control-key"


def command(store: FakeStore, action: str, *, handed: Handed | None = None, batch: int = 5000,
            message: dict | None = None, **fields) -> dict:
    """Apply one signed control message (requested now on the store's clock); its recorded answer."""
    if message is None:
        message = control_message(action, "", **fields)
        message["requested_at"] = store.clock().isoformat()
        message["signature"] = sign(message, KEY)
    Controller(store, KEY, 600, handed or Handed(), clock=store.clock, batch=batch)(message)
    return store.control_answer(message["request_id"])


def over_limit(store: FakeStore, n: int, per_day: int = 1, project: str = "alpha", **kinds) -> list[str]:
    """n mails of a project with a daily limit; the ids of those that went to the backlog, in arrival order."""
    configure(store, project, per_day=per_day)
    admitter = Admitter(store, Handed())
    events = [event(project, kind=kinds.get(str(i), "notification"), subject=f"m{i}") for i in range(n)]
    for body in events:
        admitter(body)
    return [e["event_id"] for e in events if store.get_mail(e["event_id"]).state == "backlog"]


def state(store: FakeStore, event_id: str) -> str:
    return store.get_mail(event_id).state


def test_resuming_selected_mails_queues_them_counted_beyond_the_limit_and_hands_them_on():
    store = FakeStore()
    backlog = over_limit(store, 4)
    handed = Handed()
    answer = command(store, "backlog.resume", ids=backlog[:2], project="alpha", handed=handed)
    assert answer["ok"] and not answer["running"] and answer["touched"] == 2
    assert answer["counts"] == {"resumed": 2} and answer["outcomes"] == {i: "resumed" for i in backlog[:2]}
    assert [state(store, i) for i in backlog] == ["queued", "queued", "backlog"]
    assert sorted(handed.ids) == sorted(backlog[:2])
    assert store.sent_today("alpha", "UTC") == 3  # an admin's resume overrides the limit, and is counted
    assert store.get_project("alpha").paused_reason == "daily_limit"  # selected only: still paused


def test_resuming_the_whole_backlog_in_batches_hands_each_mail_on_once_records_first_and_unpauses():
    store = FakeStore()
    backlog = over_limit(store, 8, **{"5": Kind.RECORD, "7": Kind.RECORD})
    handed = Handed()
    answer = command(store, "backlog.resume", all=True, project="alpha", handed=handed, batch=3)
    assert (answer["total"], answer["done"], answer["touched"], answer["counts"]) == (7, 7, 7, {"resumed": 7})
    assert sorted(handed.ids) == sorted(backlog) and len(handed.ids) == 7
    records = {i for i in backlog if store.get_mail(i).kind == "record"}
    assert set(handed.ids[:2]) == records
    assert store.get_project("alpha").paused_reason is None
    assert [a["action"] for a in store.audit()] == ["backlog.resume"]  # one entry for the whole request


def test_ids_unknown_of_another_project_or_in_another_state_are_reported_and_the_rest_applied():
    store = FakeStore()
    backlog = over_limit(store, 3)
    beta = over_limit(store, 2, project="beta")
    [queued] = [row["event_id"] for row in store.list_state("queued", project="alpha")]
    unknown = "00000000-0000-4000-8000-000000000000"
    answer = command(store, "backlog.suspend", ids=[backlog[0], str(queued), unknown, beta[0]], project="alpha")
    assert answer["outcomes"] == {backlog[0]: "suspended", str(queued): "not backlog (it is queued)",
                                  unknown: "unknown id", beta[0]: "belongs to project beta"}
    assert answer["counts"] == {"suspended": 1, "not backlog (it is queued)": 1, "unknown id": 1,
                                "belongs to project beta": 1}
    assert answer["touched"] == 1
    assert [state(store, i) for i in (backlog[0], backlog[1], beta[0])] == ["suspended", "backlog", "backlog"]


def test_an_unknown_project_is_refused_and_nothing_moves():
    store = FakeStore()
    backlog = over_limit(store, 3)
    answer = command(store, "backlog.suspend", ids=backlog, project="nobody")
    assert not answer["ok"] and "unknown project 'nobody'" in answer["error"]
    assert {state(store, i) for i in backlog} == {"backlog"}


def test_suspended_mails_are_kept_until_resumed_one_by_one():
    store = FakeStore()
    backlog = over_limit(store, 4)
    assert command(store, "backlog.suspend", all=True, project="alpha")["counts"] == {"suspended": 3}
    assert store.get_project("alpha").paused_reason == "daily_limit"  # suspending does not unpause
    handed = Handed()
    answer = command(store, "suspended.resume", ids=[backlog[1]], handed=handed)
    assert answer["outcomes"] == {backlog[1]: "resumed"} and handed.ids == [backlog[1]]
    assert [state(store, i) for i in backlog] == ["suspended", "queued", "suspended"]
    assert store.count_in_state("suspended", "alpha") == 2


@pytest.mark.parametrize("partly_delivered", [False, True])
def test_retrying_a_failed_mail_takes_a_unit_only_when_it_holds_none(partly_delivered):
    store = FakeStore()
    configure(store)
    mail = event(to=("a@example.com", "b@example.com"))
    Admitter(store, Handed())(mail)
    if partly_delivered:  # a got it: the unit stays with the mail when it fails for b
        deliver(store, [mail["event_id"]], Delivered("250 OK", deferred={"b@example.com": "452 4.2.2 full"}))
        store.clock.advance(10)
        store.take_due_retries()
    deliver(store, [mail["event_id"]], failure("permanent"))
    assert state(store, mail["event_id"]) == "failed"
    assert store.sent_today("alpha", "UTC") == (1 if partly_delivered else 0)
    answer = command(store, "failed.retry", ids=[mail["event_id"]])
    assert answer["counts"] == {"resumed": 1} and state(store, mail["event_id"]) == "queued"
    assert store.sent_today("alpha", "UTC") == 1  # never two units for one mail


def test_an_ambiguous_mail_resent_is_flagged_and_keeps_its_unit_and_one_closed_counts_as_sent():
    store = FakeStore()
    configure(store)
    resend, close = event(), event()
    Admitter(store, Handed())([resend, close])
    deliver(store, [resend["event_id"], close["event_id"]], failure("ambiguous"))
    assert store.sent_today("alpha", "UTC") == 2
    assert command(store, "ambiguous.resend", ids=[resend["event_id"]])["counts"] == {"resumed": 1}
    assert command(store, "ambiguous.close", ids=[close["event_id"], resend["event_id"]])["counts"] == \
        {"closed": 1, "not ambiguous (it is queued)": 1}
    resent, closed = store.get_mail(resend["event_id"]), store.get_mail(close["event_id"])
    assert (resent.state, resent.duplicate_risk) == ("queued", True)
    assert (closed.state, closed.reason) == ("sent", "closed_by_admin")
    assert store.sent_today("alpha", "UTC") == 2


def test_a_request_is_applied_once_however_often_it_arrives():
    store = FakeStore()
    backlog = over_limit(store, 3)
    message = control_message("backlog.resume", "", ids=backlog[:1], project="alpha")
    message["requested_at"] = store.clock().isoformat()
    message["signature"] = sign(message, KEY)
    handed = Handed()
    first = command(store, "", message=message, handed=handed)
    command(store, "", message=message, handed=handed)  # the broker's redelivery
    assert store.control_answer(message["request_id"]) == first and handed.ids == backlog[:1]
    assert store.sent_today("alpha", "UTC") == 2 and len(store.audit()) == 1


def test_a_message_signed_with_another_key_changes_nothing_and_is_kept_as_a_refusal():
    store = FakeStore()
    backlog = over_limit(store, 2)
    message = control_message("backlog.resume", "another-key", all=True, project="alpha")
    message["requested_at"] = store.clock().isoformat()
    message["signature"] = sign(message, "another-key")
    assert command(store, "", message=message) is None  # its request id stays free for the real request
    assert state(store, backlog[0]) == "backlog"
    assert "signature" in store.control_refusal(message["request_id"])


def test_raising_the_limit_of_an_auto_resume_project_resumes_exactly_what_the_new_limit_allows():
    store = FakeStore()
    backlog = over_limit(store, 6, per_day=2, **{"5": Kind.RECORD})
    store.set_auto_resume("alpha", True)
    handed = Handed()
    answer = command(store, "limits.set", project="alpha", per_day=4, handed=handed)
    assert answer["auto_resumed"] == {"alpha": 2} and answer["touched"] == 2
    record = backlog[-1]
    assert [state(store, i) for i in backlog] == ["queued", "backlog", "backlog", "queued"]  # the record first
    assert sorted(handed.ids) == sorted([backlog[0], record])  # made due, and handed on at once
    assert store.sent_today("alpha", "UTC") == 4 and store.get_project("alpha").paused_reason == "daily_limit"
    answer = command(store, "limits.set", project="alpha", per_day=10)
    assert answer["auto_resumed"] == {"alpha": 2} and store.sent_today("alpha", "UTC") == 6
    assert store.get_project("alpha").paused_reason is None  # its backlog drained


def test_auto_resume_stops_at_the_global_limit_and_leaves_too_big_mails_without_holding_the_project():
    store = FakeStore()
    configure(store, per_day=1, recipients=2)
    admitter = Admitter(store, Handed())
    big = event(to=("a@example.com", "b@example.com", "c@example.com"))
    events = [event(), event(), event(), big]
    for body in events:
        admitter(body)
    store.set_global_limits(per_day=2)
    store.set_project_limits("alpha", per_day=100)
    answer = command(store, "auto_resume.set", project="alpha", enabled=True)
    assert answer["auto_resumed"] == {"alpha": 1}  # one unit left in the global day
    assert (store.sent_today("*", "UTC"), store.sent_today("alpha", "UTC")) == (2, 2)  # no unit kept for none
    assert [state(store, e["event_id"]) for e in events] == ["queued", "queued", "backlog", "backlog"]
    store.set_global_limits(per_day=None)
    command(store, "limits.set", project="alpha", per_day=100)
    assert [state(store, e["event_id"]) for e in events] == ["queued", "queued", "queued", "backlog"]
    assert store.get_project("alpha").paused_reason is None  # the too-big mail waits for an admin alone


def test_pause_and_unpause_say_whether_anything_changed():
    store = FakeStore()
    configure(store)
    assert command(store, "project.pause", project="alpha")["changed"] is True
    assert command(store, "project.pause", project="alpha")["changed"] is False
    mail = event()
    Admitter(store, Handed())(mail)
    assert state(store, mail["event_id"]) == "backlog"
    assert command(store, "project.unpause", project="alpha")["changed"] is True
    assert not command(store, "project.unpause", project="nobody")["ok"]


def test_an_id_given_twice_in_other_letter_case_is_moved_once_and_the_action_ends():
    store = FakeStore()
    backlog = over_limit(store, 3)
    answer = command(store, "backlog.resume", ids=[backlog[0], backlog[0].upper()], project="alpha")
    assert not answer["running"] and answer["counts"] == {"resumed": 1} and answer["total"] == 1
    assert state(store, backlog[0]) == "queued"


class FailingAgain(Handed):
    """A hand-on after which each mail fails again at once (a recipient the server refuses for good)."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__()
        self.store = store

    def __call__(self, service, ids, priority) -> None:
        super().__call__(service, ids, priority)
        assert len(self.ids) <= 100, "the same mails were handed on again and again"
        self.store.clock.advance(1)
        for event_id in ids:
            row = next(m for m in self.store.db.mails.values() if str(m.event_id) == str(event_id))
            row.state, row.updated_at = "failed", self.store.clock()


def test_retry_all_takes_each_failed_mail_once_even_when_it_fails_again_during_the_action():
    store = FakeStore()
    backlog = over_limit(store, 7)
    command(store, "backlog.resume", ids=backlog, project="alpha", handed=FailingAgain(store))
    assert [state(store, i) for i in backlog] == ["failed"] * 6
    handed = FailingAgain(store)
    answer = command(store, "failed.retry", all=True, project="alpha", handed=handed, batch=2)
    assert sorted(handed.ids) == sorted(backlog)  # each once: a mail failed again is not the selection's
    assert answer["counts"] == {"resumed": 6} and not answer["running"]
