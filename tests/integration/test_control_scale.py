"""Bulk control actions that scale: batches committed with progress, mail handed on at once, counts, push."""

from __future__ import annotations

import threading
import time

import pytest

from deskmail.producers.control import control_message
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer
from deskmail.workers.constants import TRANSPORT_BATCH, Kind, MailService
from deskmail.workers.control import Controller, sign

KEY = "k3y-for-the-scale-tests"


@pytest.fixture
def backlog(runtime, store):
    """229 backlog mails of project alpha (a limit of 1 a day), records among them."""
    with SmtpPeer() as peer:
        runtime.settings.save("alpha", smtp_settings(peer, per_day=1))
    items = [(event(subject=f"m{i}", kind="record" if i % 10 == 0 else "notification"),
              Kind.RECORD.priority if i % 10 == 0 else Kind.NOTIFICATION.priority, 1) for i in range(230)]
    admitted = store.admit_many(items)
    return [str(e["event_id"]) for (e, _, _), a in zip(items, admitted) if a.state == "backlog"]


class Handed:
    """A transport enqueue that records what it was given (and can fail on a chosen call)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.messages: list[tuple[MailService, list[str], int]] = []
        self.fail_on = fail_on

    def __call__(self, service: MailService, ids: list[str], priority: int) -> None:
        if self.fail_on is not None and len(self.messages) == self.fail_on:
            self.fail_on = None
            raise ConnectionError("broker went away")
        self.messages.append((service, list(ids), priority))

    @property
    def ids(self) -> list[str]:
        return [i for _, ids, _ in self.messages for i in ids]


def signed(action: str, **fields) -> dict:
    message = control_message(action, "", **fields)
    message["signature"] = sign(message, KEY)
    return message


def test_resume_all_moves_in_batches_hands_every_mail_on_once_and_answers_with_counts(store, backlog):
    handed = Handed()
    message = signed("backlog.resume", all=True, project="alpha")
    notices = []
    with store.control_notices() as wait:
        Controller(store, KEY, 600, handed, batch=50)(message)
        while wait(message["request_id"], 0.5):
            notices.append(1)
    answer = store.control_answer(message["request_id"])
    assert answer["ok"] and not answer["running"] and answer["touched"] == len(backlog) == 229
    assert answer["counts"] == {"resumed": 229} and "outcomes" not in answer  # counts, not 229 lines
    assert sorted(handed.ids) == sorted(backlog) and all(len(ids) <= TRANSPORT_BATCH for _, ids, _ in
                                                         handed.messages)
    assert handed.messages[0][2] == Kind.RECORD.priority  # records first, batch by batch
    assert len(notices) >= 1  # pushed on commit; several commits may fold into one wait
    mails = [store.get_mail(i) for i in backlog]
    assert {m.state for m in mails} == {"queued"} and {m.next_attempt_at for m in mails} == {None}
    assert store.take_due_retries(1000) == []  # handed on already: the scheduler does not hand them twice
    assert store.sent_today("alpha", "UTC") == 230  # each resumed mail took one unit, as an override
    assert store.get_project("alpha").paused_reason is None
    audits = [r for r in store.audit(limit=100) if r["params"].get("request_id") == message["request_id"]]
    assert len(audits) == 1 and audits[0]["touched"] == 229 and audits[0]["project"] == "alpha"


def test_a_bulk_action_commits_its_progress_batch_by_batch_and_pushes_each(store, backlog):
    class Slow(Handed):
        def __call__(self, service, ids, priority):
            time.sleep(0.1)  # hand-on follows each commit: spaced batches, so each progress can be seen
            super().__call__(service, ids, priority)
    message, seen = signed("backlog.resume", all=True), []
    with store.control_notices() as wait:
        run = threading.Thread(target=Controller(store, KEY, 600, Slow(), batch=50), args=(message,))
        run.start()
        while wait(message["request_id"], 5):
            seen.append(store.control_answer(message["request_id"]))
            if not seen[-1]["running"]:
                break
        run.join(30)
    running = [a for a in seen if a["running"]]
    assert len({a["done"] for a in running}) >= 3 and all(a["total"] == 229 for a in running)
    assert [a["done"] for a in running] == sorted(a["done"] for a in running)
    assert seen[-1]["touched"] == 229 and not seen[-1]["running"]


def test_ids_are_kept_only_on_request_and_paged(store, backlog):
    plain = signed("backlog.suspend", all=True, project="alpha")
    Controller(store, KEY, 600, Handed(), batch=100)(plain)
    assert store.moved_ids(plain["request_id"]) == []
    kept = signed("suspended.resume", all=True, project="alpha", with_ids=True)
    Controller(store, KEY, 600, Handed(), batch=100)(kept)
    assert store.control_answer(kept["request_id"])["ids_kept"]
    first = store.moved_ids(kept["request_id"], limit=200)
    rest = store.moved_ids(kept["request_id"], after=first[-1]["n"], limit=200)
    assert len(first) == 200 and sorted(str(r["event_id"]) for r in first + rest) == sorted(backlog)


def test_a_request_stopped_half_way_goes_on_from_its_progress_when_redelivered(store, backlog):
    handed = Handed(fail_on=3)  # the broker goes away after the first batch was committed
    message = signed("backlog.resume", all=True, project="alpha")
    with pytest.raises(ConnectionError):
        Controller(store, KEY, 600, handed, batch=50)(message)
    assert store.control_answer(message["request_id"])["running"]
    Controller(store, KEY, 600, handed, batch=50)(message)  # Dramatiq's retry of the same message
    answer = store.control_answer(message["request_id"])
    assert not answer["running"] and answer["touched"] == 229 and answer["counts"] == {"resumed": 229}
    assert {store.get_mail(i).state for i in backlog} == {"queued"}
    assert store.sent_today("alpha", "UTC") == 230  # no mail took a second unit
    missed = set(backlog) - set(handed.ids)  # the batch whose hand-on failed waits for stale_queued
    assert 0 < len(missed) <= 50
    Controller(store, KEY, 600, handed, batch=50)(message)
    assert store.control_answer(message["request_id"]) == answer  # finished: applied once


def test_two_deliveries_of_one_bulk_request_at_once_share_the_work_and_count_it_once(store, backlog):
    handed, message = Handed(), signed("backlog.suspend", all=True, project="alpha")
    runs = [threading.Thread(target=Controller(store, KEY, 600, handed, batch=20), args=(message,))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    answer = store.control_answer(message["request_id"])
    assert answer["touched"] == 229 and answer["counts"] == {"suspended": 229} and not answer["running"]
    audits = [r for r in store.audit(limit=100) if r["params"].get("request_id") == message["request_id"]]
    assert len(audits) == 1


def test_an_unknown_project_is_refused_and_touches_nothing(store, backlog):
    message = signed("backlog.suspend", all=True, project="nobody")
    Controller(store, KEY, 600, Handed())(message)
    answer = store.control_answer(message["request_id"])
    assert not answer["ok"] and "unknown project 'nobody'" in answer["error"]
    assert {store.get_mail(i).state for i in backlog} == {"backlog"}


def test_a_per_id_resume_without_project_is_audited_under_the_mails_project(store, backlog):
    message = signed("backlog.resume", ids=backlog[:3])
    Controller(store, KEY, 600, Handed())(message)
    assert [r["action"] for r in store.audit("alpha", 10)] == ["backlog.resume"]
