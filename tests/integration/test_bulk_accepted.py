"""A bulk action over a whole list answers once accepted, and what it accepted is done, whoever stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pika
import pytest

from deskmail.producers.control import control_message
from deskmail.workers.constants import Kind, MailService
from deskmail.workers.control import Controller, sign
from deskmail.workers.scheduler import stalled_control_step
from tests.conftest import purge_queues, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.integration.test_admin_writes import deskmail
from tests.integration.test_control_scale import Handed
from tests.peers.smtp import SmtpPeer

KEY = "k3y-for-the-accepted-tests"


def signed(action: str, **fields) -> dict:
    message = control_message(action, "", **fields)
    message["signature"] = sign(message, KEY)
    return message


def admit_backlog(runtime, store, n: int, kind: str = "notification") -> list[str]:
    """n backlog mails of project alpha (a limit of 1 a day: the first mail ever admitted takes it)."""
    if store.get_project("alpha") is None:
        with SmtpPeer() as peer:
            runtime.settings.save("alpha", smtp_settings(peer, per_day=1))
    priority = Kind(kind).priority
    items = [(event(subject=f"m{i}", kind=kind), priority, 1) for i in range(n + 1)]
    admitted = []
    for start in range(0, len(items), 1000):
        admitted += store.admit_many(items[start:start + 1000])
    return [str(e["event_id"]) for (e, _, _), a in zip(items, admitted) if a.state == "backlog"]


def states(store, ids: list[str]) -> dict[str, str]:
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT event_id::text AS id, state FROM mail WHERE event_id = ANY(%s::uuid[])",
                            (ids,)).fetchall()
    return {r["id"]: r["state"] for r in rows}


def test_the_selection_is_fixed_and_counted_when_accepted_and_later_mail_is_not_taken(runtime, store):
    backlog = admit_backlog(runtime, store, 229)

    class Slow(Handed):
        def __call__(self, service, ids, priority):
            time.sleep(0.05)  # batches spaced out, so that mail can arrive while the action runs
            super().__call__(service, ids, priority)
    message, seen = signed("backlog.resume", all=True, project="alpha"), []
    with store.control_notices() as wait:
        run = threading.Thread(target=Controller(store, KEY, 600, Slow(), batch=50), args=(message,))
        run.start()
        assert wait(message["request_id"], 10)
        seen.append(store.control_answer(message["request_id"]))
        later = admit_backlog(runtime, store, 5, kind="record")  # records: first in line, were they taken
        run.join(30)
    first, answer = seen[0], store.control_answer(message["request_id"])
    assert first["accepted"] and first["running"] and first["total"] == 229 and first["through_seq"] > 0
    assert answer["ok"] and not answer["running"] and answer["total"] == answer["touched"] == 229
    assert answer["counts"] == {"resumed": 229}
    assert set(states(store, backlog).values()) == {"queued"}
    assert set(states(store, later).values()) == {"backlog"}  # arrived after the selection was fixed
    assert store.sent_today("alpha", "UTC") == 1 + 229  # one unit each, as an override
    assert store.stalled_control_work(0) == []  # answered: no work left for anyone


CHILD = """
import json, sys, time
from deskmail.workers.app import build_broker, enqueuer
from deskmail.workers.config import Config
from deskmail.workers.control import Controller
from deskmail.workers.runtime import Runtime
config = Config.from_env()
enqueue = enqueuer(build_broker(config))
def slow(service, ids, priority):  # a control worker on a busy machine: time to be killed mid-action
    time.sleep(0.02)
    enqueue(service, ids, priority)
Controller(Runtime(config).store, config.control_key, 600, slow, batch=100)(json.loads(sys.argv[1]))
"""


def handed_ids(amqp_url: str) -> list[str]:
    """Every event id waiting in deskmail.smtp (taken off the queue)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ids: list[str] = []
    try:
        channel = conn.channel()
        while True:
            method, _, body = channel.basic_get(MailService.SMTP.queue, auto_ack=True)
            if method is None:
                return ids
            ids += json.loads(body)["args"][0]
    finally:
        conn.close()


def test_a_control_worker_killed_mid_action_leaves_each_mail_moved_or_untouched_and_the_action_goes_on(
        config, runtime, store):
    backlog = admit_backlog(runtime, store, 3000)
    purge_queues(config.amqp_url)
    message = signed("backlog.resume", all=True, project="alpha")
    env = {**os.environ, "DESKMAIL_DATABASE_URL": config.database_url, "DESKMAIL_AMQP_URL": config.amqp_url,
           "DESKMAIL_CONTROL_KEY": KEY, "DESKMAIL_LOG_LEVEL": "WARNING"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(message)], env=env)
    try:
        wait_until(lambda: (store.control_answer(message["request_id"]) or {}).get("done", 0) >= 500, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    answer = store.control_answer(message["request_id"])
    now = states(store, backlog)
    moved = sorted(i for i, s in now.items() if s == "queued")
    assert answer["running"] and answer["accepted"] and answer["total"] == 3000 and 500 <= len(moved) < 3000
    assert set(now.values()) == {"queued", "backlog"}  # each mail moved or untouched, none in between
    assert answer["done"] == answer["touched"] == len(moved)  # progress and moves commit together
    assert store.sent_today("alpha", "UTC") == 1 + len(moved)  # a unit for each moved mail, no more
    handed = handed_ids(config.amqp_url)
    assert set(handed) <= set(moved) and len(handed) == len(set(handed))
    unhanded = set(moved) - set(handed)
    assert len(unhanded) <= 100  # at most the one batch committed last was not handed yet
    recovered = {str(r.event_id) for r in store.take_stale_queued(0, 10_000)}
    assert unhanded <= recovered  # the scheduler's stale_queued step hands those on

    handed_again = Handed()
    Controller(store, KEY, 600, handed_again, batch=100)(message)  # Dramatiq redelivers the unacked message
    answer = store.control_answer(message["request_id"])
    assert not answer["running"] and answer["touched"] == 3000 and answer["counts"] == {"resumed": 3000}
    assert set(states(store, backlog).values()) == {"queued"}
    assert not set(handed_again.ids) & set(moved)  # each mail moved (and handed) once
    assert sorted(handed_again.ids) == sorted(set(backlog) - set(moved))
    assert store.sent_today("alpha", "UTC") == 1 + 3000
    audits = [r for r in store.audit(limit=100) if r["params"].get("request_id") == message["request_id"]]
    assert len(audits) == 1 and audits[0]["touched"] == 3000


def stopped_half_way(store, message: dict) -> Handed:
    handed = Handed(fail_on=3)  # the broker goes away after the first batch was committed
    with pytest.raises(ConnectionError):
        Controller(store, KEY, 600, handed, batch=50)(message)
    assert store.control_answer(message["request_id"])["running"]
    return handed


def test_an_accepted_action_whose_message_comes_back_after_its_max_age_goes_on(runtime, store):
    admit_backlog(runtime, store, 229)
    message = signed("backlog.resume", all=True, project="alpha")
    handed = stopped_half_way(store, message)
    later = lambda: datetime.now(timezone.utc) + timedelta(hours=2)  # noqa: E731 - the message is long expired
    Controller(store, KEY, 600, handed, clock=later, batch=50)(message)
    answer = store.control_answer(message["request_id"])
    assert not answer["running"] and answer["counts"] == {"resumed": 229}
    fresh = signed("backlog.resume", all=True, project="alpha")
    Controller(store, KEY, 600, handed, clock=later, batch=50)(fresh)  # one never accepted is still refused
    assert store.control_answer(fresh["request_id"]) is None and "expired" in store.control_refusal(
        fresh["request_id"])


def test_the_scheduler_goes_on_with_an_accepted_action_nobody_reports_progress_on(runtime, store):
    backlog = admit_backlog(runtime, store, 229)
    message = signed("backlog.resume", all=True, project="alpha", with_ids=True)
    handed = stopped_half_way(store, message)
    before = store.control_answer(message["request_id"])["touched"]
    controller = Controller(store, KEY, 600, handed, batch=50)
    assert stalled_control_step(controller, 3600)() == {"control_moved": 0}  # progress is recent: not yet
    done = stalled_control_step(controller, 0)()
    answer = store.control_answer(message["request_id"])
    assert done == {"control_moved": 229 - before} and not answer["running"] and answer["touched"] == 229
    assert set(states(store, backlog).values()) == {"queued"} and store.sent_today("alpha", "UTC") == 230
    assert len(store.moved_ids(message["request_id"], limit=1000)) == 229 and answer["ids_kept"]
    assert stalled_control_step(controller, 0)() == {"control_moved": 0}  # answered: nothing left


def test_the_command_answers_with_the_count_once_accepted_and_ends_with_its_final_line(config, runtime, store,
                                                                                       worker):
    admit_backlog(runtime, store, 40)
    worker()
    done = deskmail(config, "backlog", "resume", "--all", "--project", "alpha", "--json")
    answer = json.loads(done.stdout)  # one JSON object: the final answer, with the accepted count
    assert done.returncode == 0 and answer["accepted"] and answer["total"] == answer["touched"] == 40
    assert answer["counts"] == {"resumed": 40}
    more = len(admit_backlog(runtime, store, 10))
    done = deskmail(config, "backlog", "suspend", "--all", "--project", "alpha")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert lines[0].startswith(f"suspending {more} mail(s) of project alpha: accepted as request ")
    assert lines[-1] == f"done: {more} mail(s)" and len(lines) == 2


def test_a_mail_that_comes_back_into_the_state_during_the_action_is_not_taken_again(runtime, store):
    """A retried mail that fails again at once is not retried a second time by the same `retry --all`."""
    backlog = admit_backlog(runtime, store, 12)
    with store.pool.connection() as conn:
        conn.execute("UPDATE mail SET state = 'failed', updated_at = now() - interval '1 hour' "
                     "WHERE event_id = ANY(%s::uuid[])", (backlog,))

    class FailingAgain(Handed):
        def __call__(self, service, ids, priority):
            super().__call__(service, ids, priority)
            assert len(self.ids) <= 100, "the same mails were handed on again and again"
            with store.pool.connection() as conn:
                conn.execute("UPDATE mail SET state = 'failed', updated_at = now() WHERE event_id = ANY(%s::uuid[])",
                             ([str(i) for i in ids],))
    handed = FailingAgain()
    message = signed("failed.retry", all=True, project="alpha")
    Controller(store, KEY, 600, handed, batch=5)(message)
    answer = store.control_answer(message["request_id"])
    assert sorted(map(str, handed.ids)) == sorted(backlog)
    assert answer["counts"] == {"resumed": 12} and not answer["running"]


def test_an_id_given_twice_in_other_letter_case_ends_the_action(runtime, store):
    [one, _] = admit_backlog(runtime, store, 2)
    message = signed("backlog.resume", ids=[one, one.upper()], project="alpha")
    Controller(store, KEY, 600, Handed(), batch=5)(message)
    answer = store.control_answer(message["request_id"])
    assert not answer["running"] and answer["counts"] == {"resumed": 1}
