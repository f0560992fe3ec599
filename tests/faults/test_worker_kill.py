"""A worker process SIGKILLed at each point of the SMTP exchange, and recovery by the scheduler."""

from __future__ import annotations

import time

from tests.faults.ledger import DOMAIN, judge, ledger, message_ids
from tests.faults.traffic import Once, events
from tests.peers.smtp import SmtpPeer
from workers.message import message_id_for

N = 20


def _kill_run(site, record, point: str, expected: str):  # noqa: ANN001, ANN202
    worker = site.worker()
    site.scheduler()
    trigger = Once(5, worker.kill_workers)
    hooks = {"before DATA": "on_data_command", "inside the DATA window": "before_data_reply",
             "after the reply": "after_data_reply"}
    with SmtpPeer(**{hooks[point]: trigger}) as peer:
        site.project(peer, per_day=N)
        record(f"worker SIGKILL {point}", expected)
        ids = site.publisher.publish_many(events(N))
        verdict = judge(site.db_url, ids, lambda: peer.messages, timeout=90, per_day=N,
                        fault_ended=_fired(trigger), expect_states={"sent": N})
        copies = message_ids(peer.messages)
        killed = [i for i in ids if copies.get(message_id_for(i, DOMAIN), 0) > 1]
        record.verdict(verdict, restarts=worker.restarts, doubled=killed)
        return ids, verdict, worker, peer


def _fired(trigger: Once) -> float:
    deadline = time.monotonic() + 30
    while trigger.fired_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trigger.fired_at is not None, "the fault hook never ran"
    return trigger.fired_at


def test_worker_killed_before_data_leaves_a_mail_sent_once_later_unflagged(site, record):
    ids, verdict, worker, peer = _kill_run(
        site, record, "before DATA", "every mail sent once; the killed one taken over, not flagged")
    assert worker.restarts >= 1
    flagged = [i for i, r in ledger(site.db_url, ids).items() if r.duplicate_risk]
    assert flagged == [], "a mail that died before the end of DATA is safe to send again and must not be flagged"


def test_worker_killed_inside_the_data_window_sends_at_most_one_flagged_second_copy(site, record):
    _kill_run(site, record, "inside the DATA window",
              "all sent; the killed mail at most twice, and then flagged duplicate_risk")


def test_worker_killed_after_the_reply_loses_nothing_and_sends_no_unflagged_copy(site, record):
    _kill_run(site, record, "after the reply",
              "all sent; a second copy only if the reply was not recorded, and then flagged")
